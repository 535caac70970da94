//! Writes the manual pages and shell completions that the Debian package ships. `packaging/build-deb.sh`
//! runs it before `cargo deb`:
//!
//! ```sh
//! cargo run --example gen_docs -- --out-dir target/packaging --date 2026-11-29
//! ```
//!
//! It writes, under `--out-dir`:
//! - `man/chatapp-kommo-sync.1` and one `man/chatapp-kommo-sync-<command>.1` per command, from the
//!   clap definitions (`Cli::command()`);
//! - `man/chatapp-kommo-sync.toml.5`, from `config.example.toml`: every table and key with its
//!   comment text. Each key's default is the program's own: the file is parsed with and without
//!   the key (`config::ConfigFile::parse`), so the page cannot claim a default the code does not
//!   have;
//! - `completions/chatapp-kommo-sync.bash`, `completions/_chatapp-kommo-sync` (zsh) and
//!   `completions/chatapp-kommo-sync.fish`.

use chatapp_kommo_sync::cli::Cli;
use chatapp_kommo_sync::config::ConfigFile;
use clap::{CommandFactory, Parser};
use clap_complete::Shell;
use clap_mangen::Man;
use std::fs;
use std::path::{Path, PathBuf};

const BIN: &str = "chatapp-kommo-sync";
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Writes the man pages and shell completions of chatapp-kommo-sync.
#[derive(Parser)]
struct Args {
    /// Output directory (`man/` and `completions/` are created in it; old files there are removed).
    #[arg(long, value_name = "DIR")]
    out_dir: PathBuf,
    /// The pages' date, YYYY-MM-DD (build-deb.sh passes the date of the newest changelog entry).
    #[arg(long, default_value = "")]
    date: String,
    /// The documented config the section 5 page is made from.
    #[arg(long, value_name = "PATH", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"))]
    config_example: PathBuf,
}

type Res<T> = Result<T, String>;

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("gen_docs: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Res<()> {
    let man_dir = args.out_dir.join("man");
    let comp_dir = args.out_dir.join("completions");
    for d in [&man_dir, &comp_dir] {
        if d.exists() {
            fs::remove_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let mut written = command_pages(&man_dir, &args.date)?;

    let text = fs::read_to_string(&args.config_example)
        .map_err(|e| format!("{}: {e}", args.config_example.display()))?;
    let page = config_page(&text, &args.date)?;
    written.push(write(
        &man_dir.join(format!("{BIN}.toml.5")),
        page.as_bytes(),
    )?);

    for (shell, name) in [
        (Shell::Bash, format!("{BIN}.bash")),
        (Shell::Zsh, format!("_{BIN}")),
        (Shell::Fish, format!("{BIN}.fish")),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), BIN, &mut out);
        written.push(write(&comp_dir.join(name), &out)?);
    }
    for p in written {
        println!("{}", p.display());
    }
    Ok(())
}

fn write(path: &Path, data: &[u8]) -> Res<PathBuf> {
    fs::write(path, data).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path.to_path_buf())
}

// --- section 1: the command and its subcommands ---------------------------------------------

/// Sections after clap's on the main page. Exit codes as in `src/cli.rs`; paths and variables as
/// in `src/config.rs` and the systemd units.
const MAIN_EXTRA: &str = r#".SH "EXIT STATUS"
.TP
.B 0
Success.
.TP
.B 1
Any other failure (an API, the state db, the network).
.TP
.B 2
A config error: the message names the key and the reason.
.TP
.B 3
\fBonce\fR stopped at the safety brake (\fBmax_writes_per_cycle\fR): nothing was written.
Run \fBonce \-\-dry\-run\fR to see the plan, then \fBonce \-\-force\fR to apply it.
.SH ENVIRONMENT
.TP
.B CHATAPP_KOMMO_SYNC_CONFIG
The config file when \fB\-\-config\fR is not given.
.TP
.B CREDENTIALS_DIRECTORY
Set by systemd (\fBLoadCredential=\fR): relative \fB*_file\fR paths in the config resolve here.
When it is not set, they resolve against the config file's folder.
.TP
.B RUST_LOG
Log filter; overrides the config's \fBlog_level\fR.
.SH FILES
.TP
.I /etc/chatapp\-kommo\-sync/config.toml
The config of \fBchatapp\-kommo\-sync.service\fR, and the default of \fB\-\-config\fR; see
.BR chatapp\-kommo\-sync.toml (5).
.TP
.I /etc/chatapp\-kommo\-sync/ACCOUNT.toml
The config of the instance \fBchatapp\-kommo\-sync@ACCOUNT.service\fR.
.TP
.I /etc/chatapp\-kommo\-sync/credentials/
The secret files (one secret per file, root only), handed to the daemon by systemd.
.TP
.I /var/lib/chatapp\-kommo\-sync/state.redb
The state db (the config's \fBstate_path\fR): sync bases, parked pairs, audit log, tokens.
.TP
.I /usr/lib/systemd/system/chatapp\-kommo\-sync.service
.TQ
.I /usr/lib/systemd/system/chatapp\-kommo\-sync@.service
The systemd units. Neither is enabled or started on install.
.TP
.I /usr/share/doc/chatapp\-kommo\-sync/README.Debian
First start, credentials, instances, reload and the sandbox.
"#;

/// SEE ALSO of the main page (`subcommands` = their names) or of a command's page (`None`).
fn see_also(subcommands: Option<&[String]>) -> String {
    let mut refs: Vec<String> = match subcommands {
        Some(subs) => subs
            .iter()
            .map(|s| format!(".BR {} (1),", roff_lit(&format!("{BIN}-{s}"))))
            .collect(),
        None => vec![format!(".BR {} (1),", roff_lit(BIN))],
    };
    refs.push(format!(".BR {}.toml (5),", roff_lit(BIN)));
    refs.push(".BR systemctl (1),".into());
    refs.push(".BR systemd.exec (5)".into());
    format!(".SH \"SEE ALSO\"\n{}\n", refs.join("\n"))
}

/// No hyphenation, ragged right: keeps paths, keys and values whole.
const LAYOUT: &str = ".nh\n.ad l\n";

/// Inserts [`LAYOUT`] after the page's `.TH` line.
fn with_layout(page: Vec<u8>) -> Res<Vec<u8>> {
    let text = String::from_utf8(page).map_err(|e| e.to_string())?;
    let mut out = String::with_capacity(text.len() + LAYOUT.len());
    let mut done = false;
    for line in text.split_inclusive('\n') {
        out.push_str(line);
        if !done && line.starts_with(".TH ") {
            out.push_str(LAYOUT);
            done = true;
        }
    }
    done.then(|| out.into_bytes())
        .ok_or_else(|| "no .TH line in a generated page".to_string())
}

fn command_pages(dir: &Path, date: &str) -> Res<Vec<PathBuf>> {
    let io = |e: std::io::Error| e.to_string();
    // The real binary has a `help` subcommand; it needs no page (like clap_mangen::generate_to).
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let subs: Vec<clap::Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    let sub_names: Vec<String> = subs.iter().map(|s| s.get_name().to_string()).collect();
    let source = format!("{BIN} {VERSION}");
    let mut written = Vec::new();

    let man = Man::new(cmd.clone())
        .date(date)
        .source(&source)
        .manual("User Commands");
    let mut out = Vec::new();
    man.render_title(&mut out).map_err(io)?;
    man.render_name_section(&mut out).map_err(io)?;
    man.render_synopsis_section(&mut out).map_err(io)?;
    man.render_description_section(&mut out).map_err(io)?;
    out.extend_from_slice(
        b".PP\nOn a server it runs as a systemd service: \\fBchatapp\\-kommo\\-sync.service\\fR, or one\n\
          \\fBchatapp\\-kommo\\-sync@ACCOUNT.service\\fR per account. Each command has its own\n\
          page, named below.\n",
    );
    man.render_options_section(&mut out).map_err(io)?;
    man.render_subcommands_section(&mut out).map_err(io)?;
    out.extend_from_slice(MAIN_EXTRA.as_bytes());
    out.extend_from_slice(see_also(Some(&sub_names)).as_bytes());
    written.push(write(&dir.join(man.get_filename()), &with_layout(out)?)?);

    for sub in subs {
        let man = Man::new(sub)
            .date(date)
            .source(&source)
            .manual("User Commands");
        let name = man.get_filename();
        let mut out = Vec::new();
        man.render(&mut out).map_err(io)?;
        out.extend_from_slice(see_also(None).as_bytes());
        written.push(write(&dir.join(&name), &with_layout(out)?)?);
    }
    Ok(written)
}

// --- section 5: the config file, from config.example.toml -----------------------------------

/// One line of config.example.toml.
#[derive(Debug)]
enum Line {
    Blank,
    Comment(String),
    Table {
        name: String,
        commented: bool,
        trailing: Option<String>,
    },
    Key {
        key: String,
        value: String,
        commented: bool,
        trailing: Option<String>,
    },
}

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_lowercase() || f == '_')
        && c.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Splits `code # comment` at the first `#` outside a TOML string.
fn split_comment(s: &str) -> (&str, Option<String>) {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match quote {
            Some('"') if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' => {
                let t = s[i + 1..].trim();
                return (s[..i].trim_end(), (!t.is_empty()).then(|| t.to_string()));
            }
            None => {}
        }
    }
    (s.trim_end(), None)
}

/// `[a.b]  # comment`
fn parse_table(s: &str) -> Option<(String, Option<String>)> {
    let (code, trailing) = split_comment(s.trim_start());
    let name = code.strip_prefix('[')?.strip_suffix(']')?;
    (name.split('.').all(is_ident)).then(|| (name.to_string(), trailing))
}

/// `key = value  # comment`, where the value is one whole TOML value.
fn parse_key(s: &str) -> Option<(String, String, Option<String>)> {
    let (code, trailing) = split_comment(s.trim_start());
    let (key, value) = code.split_once('=')?;
    let (key, value) = (key.trim(), value.trim());
    if !is_ident(key) || value.is_empty() {
        return None;
    }
    toml::from_str::<toml::Table>(&format!("v = {value}")).ok()?;
    Some((key.to_string(), value.to_string(), trailing))
}

fn classify(line: &str) -> Res<Line> {
    if line.trim().is_empty() {
        return Ok(Line::Blank);
    }
    if let Some(body) = line.trim_start().strip_prefix('#') {
        let body = body.strip_prefix(' ').unwrap_or(body);
        if let Some((name, trailing)) = parse_table(body) {
            return Ok(Line::Table {
                name,
                commented: true,
                trailing,
            });
        }
        if let Some((key, value, trailing)) = parse_key(body) {
            return Ok(Line::Key {
                key,
                value,
                commented: true,
                trailing,
            });
        }
        return Ok(Line::Comment(body.trim_end().to_string()));
    }
    if let Some((name, trailing)) = parse_table(line) {
        return Ok(Line::Table {
            name,
            commented: false,
            trailing,
        });
    }
    if let Some((key, value, trailing)) = parse_key(line) {
        return Ok(Line::Key {
            key,
            value,
            commented: false,
            trailing,
        });
    }
    Err(format!(
        "cannot read this line (one key = one whole value on one line, or a [table]): {line}"
    ))
}

#[derive(Debug)]
struct Entry {
    key: String,
    value: String,
    commented: bool,
    line: usize,
    doc: Vec<String>,
}

#[derive(Debug)]
struct Table {
    name: String,
    commented: bool,
    line: usize,
    doc: Vec<String>,
    entries: Vec<Entry>,
}

/// The documented config: the comment before the first table, and the tables.
#[derive(Debug)]
struct Documented {
    preamble: Vec<String>,
    tables: Vec<Table>,
}

/// Comment lines before a key or a table header document it (with its trailing comment); a
/// comment block followed by a blank line documents the table it is in. An empty string in a doc
/// separates paragraphs.
fn read_documented(text: &str) -> Res<Documented> {
    let mut doc = Documented {
        preamble: vec![],
        tables: vec![],
    };
    let mut pending: Vec<String> = vec![];
    for (i, raw) in text.lines().enumerate() {
        let at = |e: String| format!("config example line {}: {e}", i + 1);
        match classify(raw).map_err(at)? {
            Line::Comment(c) => pending.push(c),
            Line::Blank => {
                if !pending.is_empty() {
                    let target = match doc.tables.last_mut() {
                        Some(t) => &mut t.doc,
                        None => &mut doc.preamble,
                    };
                    if !target.is_empty() {
                        target.push(String::new());
                    }
                    target.append(&mut pending);
                }
            }
            Line::Table {
                name,
                commented,
                trailing,
            } => {
                let mut d = std::mem::take(&mut pending);
                d.extend(trailing);
                doc.tables.push(Table {
                    name,
                    commented,
                    line: i,
                    doc: d,
                    entries: vec![],
                });
            }
            Line::Key {
                key,
                value,
                commented,
                trailing,
            } => {
                let mut d = std::mem::take(&mut pending);
                d.extend(trailing);
                let table = doc
                    .tables
                    .last_mut()
                    .ok_or_else(|| at(format!("key {key} before any [table]")))?;
                if table.entries.iter().any(|e| e.key == key) {
                    return Err(at(format!("[{}] {key} is listed twice", table.name)));
                }
                table.entries.push(Entry {
                    key,
                    value,
                    commented,
                    line: i,
                    doc: d,
                });
            }
        }
    }
    if !pending.is_empty() {
        let target = match doc.tables.last_mut() {
            Some(t) => &mut t.doc,
            None => &mut doc.preamble,
        };
        target.append(&mut pending);
    }
    Ok(doc)
}

/// The config the program makes of `lines` (comments out), as a TOML value with every default
/// filled in; `Err((key, reason))` if the program rejects it.
fn effective(lines: &[String]) -> Result<toml::Value, (String, String)> {
    let text = lines.join("\n");
    let cfg = ConfigFile::parse(&text, "config.example.toml")
        .map_err(|e| (e.first().key.clone(), e.first().reason.clone()))?;
    toml::Value::try_from(&cfg).map_err(|e| (String::new(), format!("cannot serialize: {e}")))
}

fn lookup<'v>(v: &'v toml::Value, path: &str) -> Option<&'v toml::Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn uncomment(line: &str) -> String {
    let body = line.trim_start().trim_start_matches('#');
    body.strip_prefix(' ').unwrap_or(body).to_string()
}

/// What the page says about a key's default.
enum Default {
    /// The value written in the file is the default.
    AsWritten,
    /// The default differs from what the file sets.
    Other(String),
    /// No value unless the key is given.
    Unset,
    /// The program rejects the config without it: why.
    Required(String),
    /// Not found out (an optional table the program rejects when uncommented alone).
    Unknown,
}

/// The default of every key, by `[table] key`. Active keys: the file with the key's line removed.
/// Commented keys of an active table: the file as it is. Keys of a commented-out table: the file
/// with that table uncommented (and any key the program then names as conflicting removed).
fn defaults(text: &str, doc: &Documented) -> Res<Vec<Vec<Default>>> {
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let as_is = effective(&lines)
        .map_err(|(k, r)| format!("the program rejects config.example.toml: {k}: {r}"))?;
    let key_line = |dotted: &str| -> Option<usize> {
        let (t, k) = dotted.rsplit_once('.')?;
        let table = doc.tables.iter().find(|x| x.name == t && !x.commented)?;
        table
            .entries
            .iter()
            .find(|e| e.key == k && !e.commented)
            .map(|e| e.line)
    };
    let mut all = Vec::new();
    for table in &doc.tables {
        // The text this table's keys are judged in.
        let mut base = lines.clone();
        let mut base_ok = true;
        if table.commented {
            base[table.line] = uncomment(&lines[table.line]);
            for e in &table.entries {
                base[e.line] = uncomment(&lines[e.line]);
            }
            base_ok = false;
            for _ in 0..3 {
                match effective(&base) {
                    Ok(_) => {
                        base_ok = true;
                        break;
                    }
                    Err((k, _)) => match key_line(&k) {
                        Some(l) if !base[l].starts_with('#') => base[l] = format!("# {}", base[l]),
                        _ => break,
                    },
                }
            }
            if !base_ok {
                eprintln!(
                    "gen_docs: note: [{}] cannot be uncommented alone; its keys are shown as examples",
                    table.name
                );
            }
        }
        let base_value = if base_ok { effective(&base).ok() } else { None };
        let mut row = Vec::new();
        for e in &table.entries {
            let path = format!("{}.{}", table.name, e.key);
            let d = match (&base_value, e.commented && !table.commented) {
                (None, _) => Default::Unknown,
                // A commented key in an active table: absent from the file as it is.
                (Some(_), true) => match lookup(&as_is, &path) {
                    None => Default::Unset,
                    Some(actual) => {
                        let mut with = lines.clone();
                        with[e.line] = uncomment(&lines[e.line]);
                        match effective(&with) {
                            Ok(v) if v == as_is => Default::AsWritten,
                            _ => {
                                return Err(format!(
                                    "config.example.toml line {}: `{}` is commented out as the \
                                     default, but the program's default is {actual}: fix the line",
                                    e.line + 1,
                                    lines[e.line].trim()
                                ));
                            }
                        }
                    }
                },
                // A key present in the base text: remove it.
                (Some(with_key), false) => {
                    let mut without = base.clone();
                    without[e.line] = String::new();
                    match effective(&without) {
                        Err((_, reason)) => Default::Required(reason),
                        Ok(v) if &v == with_key => Default::AsWritten,
                        Ok(v) => match lookup(&v, &path) {
                            Some(d) => Default::Other(d.to_string()),
                            None => Default::Unset,
                        },
                    }
                }
            };
            row.push(d);
        }
        all.push(row);
    }
    Ok(all)
}

/// Escapes text for a roff text line.
fn roff_text(s: &str) -> String {
    let s = s.replace('\\', "\\e");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

/// Escapes a literal (a key, a value, code): also `-` as a minus sign, as in commands, and with a
/// break point after each `/` (pages are not hyphenated, and a long path must still fit).
fn roff_lit(s: &str) -> String {
    s.replace('\\', "\\e")
        .replace('-', "\\-")
        .replace('/', "/\\:")
}

/// Prose with `code` spans in bold.
fn prose(s: &str) -> String {
    if !s.matches('`').count().is_multiple_of(2) {
        return roff_text(s);
    }
    let mut out = String::new();
    for (i, part) in s.split('`').enumerate() {
        if i % 2 == 1 {
            out.push_str(&format!("\\fB{}\\fR", roff_lit(part)));
        } else {
            out.push_str(&part.replace('\\', "\\e"));
        }
    }
    if out.starts_with('.') || out.starts_with('\'') {
        out.insert_str(0, "\\&");
    }
    out
}

/// `  "tag" - text`: an indented list item.
fn list_item(line: &str) -> Option<(usize, &str, &str)> {
    let indent = line.len() - line.trim_start().len();
    if indent == 0 {
        return None;
    }
    let rest = line.trim_start();
    let tag_end = if let Some(r) = rest.strip_prefix('"') {
        r.find('"')? + 2
    } else {
        rest.find(' ')?
    };
    let (tag, after) = rest.split_at(tag_end);
    let text = after.strip_prefix(' ')?.trim_start().strip_prefix("- ")?;
    Some((indent, tag, text.trim()))
}

/// Renders comment lines as roff. `para` starts a new paragraph at the current indent (`.PP` at
/// the top, `.IP` inside a `.TP` item). Indented `"tag" - text` lines become a nested list (more
/// indented lines continue an item); other indented lines stay lines of their own.
fn render_doc(lines: &[String], para: &str, out: &mut String) {
    #[derive(PartialEq)]
    enum State {
        Text,
        /// In a nested list whose tags are indented this much.
        List(usize),
        /// After an indented line kept as it is.
        Kept,
    }
    let mut state = State::Text;
    for line in lines {
        let indent = line.len() - line.trim_start().len();
        let item = list_item(line);
        // Leave the current state if this line does not continue it.
        match state {
            State::List(ind) if item.is_none() && (indent <= ind || line.trim().is_empty()) => {
                out.push_str(".RE\n");
                if !line.trim().is_empty() {
                    // Back to the paragraph's indent.
                    out.push_str(&format!("{para}\n"));
                }
                state = State::Text;
            }
            State::Kept if indent == 0 => {
                out.push_str(".br\n");
                state = State::Text;
            }
            _ => {}
        }
        if line.trim().is_empty() {
            out.push_str(&format!("{para}\n"));
            state = State::Text;
        } else if let Some((ind, tag, text)) = item {
            match state {
                State::List(_) => {}
                State::Kept => out.push_str(".br\n.RS\n"),
                State::Text => out.push_str(".RS\n"),
            }
            state = State::List(ind);
            out.push_str(&format!(
                ".TP\n\\fB{}\\fR\n{}\n",
                roff_lit(tag),
                prose(text)
            ));
        } else if indent > 0 && !matches!(state, State::List(_)) {
            // On a line of its own, indented by two fixed spaces; long lines still wrap.
            out.push_str(".br\n");
            out.push_str(&format!("\\ \\ {}\n", prose(line.trim())));
            state = State::Kept;
        } else {
            out.push_str(&format!("{}\n", prose(line.trim())));
        }
    }
    match state {
        State::List(_) => out.push_str(".RE\n"),
        State::Kept => out.push_str(".br\n"),
        State::Text => {}
    }
}

const CONFIG_FILES: &str = r#".SH FILES
.TP
.I /etc/chatapp\-kommo\-sync/config.toml
The config of \fBchatapp\-kommo\-sync.service\fR: a conffile, owned by root, group
\fBchatapp\-kommo\-sync\fR, mode 0640 (it names accounts and ids, never secrets).
.TP
.I /etc/chatapp\-kommo\-sync/ACCOUNT.toml
The config of \fBchatapp\-kommo\-sync@ACCOUNT.service\fR. It must set
\fBstate_path = "/var/lib/chatapp\-kommo\-sync/ACCOUNT/state.redb"\fR.
.TP
.I /etc/chatapp\-kommo\-sync/credentials/
The files the \fB*_file\fR keys name (one secret each, owned by root, mode 0600;
\fBACCOUNT/\fR for an instance). systemd copies them into the daemon's
\fB$CREDENTIALS_DIRECTORY\fR (\fBLoadCredential=\fR).
.TP
.I /usr/share/doc/chatapp\-kommo\-sync/config.example.toml
The documented config this page is made from.
.SH "SEE ALSO"
.BR chatapp\-kommo\-sync (1),
.BR chatapp\-kommo\-sync\-check\-config (1),
.BR systemd.exec (5)
"#;

fn config_page(text: &str, date: &str) -> Res<String> {
    let doc = read_documented(text)?;
    let defaults = defaults(text, &doc)?;
    let mut out = String::new();
    out.push_str(&format!(
        ".TH {} 5 \"{date}\" \"{BIN} {VERSION}\" \"File Formats\"\n",
        roff_lit(&format!("{BIN}.toml").to_uppercase())
    ));
    out.push_str(LAYOUT);
    out.push_str(&format!(
        ".SH NAME\n{}.toml \\- configuration file of {}\n",
        roff_lit(BIN),
        roff_lit(BIN)
    ));
    out.push_str(
        ".SH SYNOPSIS\n.I /etc/chatapp\\-kommo\\-sync/config.toml\n.br\n\
         .I /etc/chatapp\\-kommo\\-sync/ACCOUNT.toml\n",
    );
    out.push_str(".SH DESCRIPTION\n");
    render_doc(&doc.preamble, ".PP", &mut out);
    out.push_str(
        ".PP\nThe file is TOML. This page lists every table and key of the shipped file, with the \
         file's own comments. A default is the program's own value when the key is left out; a \
         table whose header is commented out in the shipped file is optional.\n",
    );
    out.push_str(".SH \"TABLES AND KEYS\"\n");
    for (table, defaults) in doc.tables.iter().zip(&defaults) {
        out.push_str(&format!(".SS \"[{}]\"\n", table.name));
        if table.commented {
            out.push_str("Optional (commented out in the shipped file).\n");
        }
        if !table.doc.is_empty() {
            if table.commented {
                out.push_str(".PP\n");
            }
            render_doc(&table.doc, ".PP", &mut out);
        }
        for (e, d) in table.entries.iter().zip(defaults) {
            out.push_str(&format!(".TP\n\\fB{}\\fR\n", roff_lit(&e.key)));
            if !e.doc.is_empty() {
                render_doc(&e.doc, ".IP", &mut out);
                out.push_str(".IP\n");
            }
            let value = format!("\\fB{}\\fR", roff_lit(&e.value));
            let shown = if e.commented {
                format!("Example: {value}.")
            } else {
                format!("The shipped file sets {value}.")
            };
            let line = match d {
                Default::AsWritten => format!("Default: {value}."),
                Default::Other(v) => format!("Default: \\fB{}\\fR. {shown}", roff_lit(v)),
                Default::Unset => format!("Not set by default. {shown}"),
                // serde's "missing field `x`", or the config's own "required, but missing from [t]"
                Default::Required(reason)
                    if reason.contains("missing field")
                        || reason.starts_with("required, but missing") =>
                {
                    format!("Required. {shown}")
                }
                Default::Required(reason) => {
                    let reason = match reason.rsplit_once(" (line ") {
                        Some((r, _)) => r,
                        None => reason,
                    };
                    format!(
                        "No default: without it the config is rejected ({}). {shown}",
                        roff_text(reason.trim())
                    )
                }
                Default::Unknown => shown,
            };
            out.push_str(&format!("{line}\n"));
        }
    }
    out.push_str(CONFIG_FILES);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comment_starts_outside_strings_only() {
        assert_eq!(
            split_comment(r#"a = "x # y"  # z"#),
            (r#"a = "x # y""#, Some("z".to_string()))
        );
        assert_eq!(split_comment("a = 1"), ("a = 1", None));
    }

    #[test]
    fn prose_is_not_taken_for_a_key() {
        let comment = |l: &str| matches!(classify(l), Ok(Line::Comment(_)));
        assert!(comment(r#"#   "newest" - the later change wins"#));
        assert!(comment(
            r#"# Kinds: "lead", "contact", "company", "customer"."#
        ));
        assert!(matches!(
            classify(r#"# listen = "127.0.0.1:9187""#),
            Ok(Line::Key {
                commented: true,
                ..
            })
        ));
        assert!(matches!(
            classify("# [kommo.oauth]   # instead of token_file"),
            Ok(Line::Table {
                commented: true,
                ..
            })
        ));
    }

    #[test]
    fn list_items_keep_their_tag() {
        assert_eq!(
            list_item(r#"  "crm"    - Kommo always wins"#),
            Some((2, r#""crm""#, "Kommo always wins"))
        );
        assert_eq!(list_item("no indent - no item"), None);
    }

    #[test]
    fn the_config_page_has_every_table_and_key_of_the_example() {
        let text = include_str!("../config.example.toml");
        let page = config_page(text, "2026-01-01").unwrap();
        let doc = read_documented(text).unwrap();
        let key_lines = text
            .lines()
            .filter(|l| matches!(classify(l), Ok(Line::Key { .. })))
            .count();
        assert_eq!(
            doc.tables.iter().map(|t| t.entries.len()).sum::<usize>(),
            key_lines
        );
        for t in &doc.tables {
            let at = page
                .find(&format!(".SS \"[{}]\"\n", t.name))
                .unwrap_or_else(|| panic!("no section for [{}]", t.name));
            for e in &t.entries {
                assert!(
                    page[at..].contains(&format!(".TP\n\\fB{}\\fR\n", roff_lit(&e.key))),
                    "[{}] {} is not on the page",
                    t.name,
                    e.key
                );
            }
        }
        // A required key says so; a commented key with a default shows it.
        assert!(page.contains("\\fBbase_url\\fR\n"));
        assert!(page.contains("Required."));
        assert!(page.contains(
            "Default: \\fB\"/\\:var/\\:lib/\\:chatapp\\-kommo\\-sync/\\:state.redb\"\\fR."
        ));
        assert!(page.contains("Default: \\fB\"30s\"\\fR."));
    }
}
