//! Panics: the one place one is caught, and what happens to any other.
//!
//! redb can panic on some damaged files where it does not detect the damage first (a read-only
//! open verifies no checksum; see the state db's module docs). Opening and reading the state db
//! therefore runs under [`catch`], which turns such a panic into an error naming the file, so a
//! damaged db never aborts the process. Everything else treats a panic as a bug: the hook that
//! [`install_hook`] sets (the binary's `main` does) logs it at error level and exits with status
//! 101 at once, so systemd restarts the unit rather than letting it run on in an unknown state.
//! (The release profile unwinds so that [`catch`] works; the hook keeps "a bug stops the process".)

use std::cell::{Cell, RefCell};

thread_local! {
    static GUARDED: Cell<bool> = const { Cell::new(false) };
    static LAST: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs `f`; a panic inside it comes back as `Err` with its message (and nothing is printed).
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let was = GUARDED.with(|g| g.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    r.map_err(|payload| {
        LAST.with(|l| l.borrow_mut().take())
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

/// The process-wide hook: silent (the message kept for [`catch`]) inside a guard; otherwise log
/// the panic and exit 101.
pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = match info.payload().downcast_ref::<&str>() {
            Some(s) => s.to_string(),
            None => info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_default(),
        };
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        if GUARDED.with(|g| g.get()) {
            LAST.with(|l| *l.borrow_mut() = Some(format!("{msg} (at {at})")));
            return;
        }
        tracing::error!(at = %at, "internal error (a bug): {msg}; exiting");
        eprintln!("chatapp-kommo-sync: internal error (a bug) at {at}: {msg}; exiting");
        std::process::exit(101);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_is_an_error_and_outside_state_is_restored() {
        let r: Result<(), String> = catch(|| panic!("damaged page {}", 7));
        assert!(r.unwrap_err().contains("damaged page 7"));
        assert_eq!(catch(|| 5), Ok(5));
        assert!(!GUARDED.with(|g| g.get()));
    }
}
