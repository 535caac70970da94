//! The wall clock, read in one place. The core never reads it: the cycle, the clients and the
//! commands pass the time they read here down as an argument.

/// Unix seconds now; 0 on a clock set before 1970.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
