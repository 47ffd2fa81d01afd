//! `udm-tenant`: export, import and check udm tenant archives. See `lib.rs` for the format.

use std::io::{BufReader, BufWriter, Write};
use std::process::ExitCode;

const USAGE: &str = "\
usage:
  udm-tenant export CONNECTION SLUG [-o FILE]        write tenant SLUG as an archive (stdout, or FILE)
  udm-tenant import CONNECTION [--as SLUG] [-i FILE] make the archive (stdin, or FILE) a tenant
  udm-tenant check [-i FILE]                         verify an archive without a database
  (-v: say how each section went, on stderr)

CONNECTION is a database name, a connection string (\"host=db port=5432 dbname=shop user=admin\")
or a URL (postgresql://admin@db/shop); PGHOST, PGPORT, PGUSER, PGPASSWORD, PGSSLMODE and
PGSSLROOTCERT are used as libpq uses them. Exporting and importing need a udm admin (a member
of udm_admin, or a superuser). The import is one transaction: it succeeds whole or leaves nothing.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(m)) => {
            eprintln!("udm-tenant: {m}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(e)) => {
            eprintln!("udm-tenant: {e}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Usage(String),
    Failed(udm_tenant::Error),
}

impl From<udm_tenant::Error> for Failure {
    fn from(e: udm_tenant::Error) -> Self {
        Failure::Failed(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Failed(e.into())
    }
}

/// `--flag value` options, in the order given.
type Options = Vec<(String, String)>;

/// Positional arguments and `--flag value` options.
fn parse(args: &[String], flags: &[&str]) -> Result<(Vec<String>, Options), Failure> {
    let mut pos = Vec::new();
    let mut opts = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a.starts_with('-') && a.len() > 1 {
            if !flags.contains(&a.as_str()) {
                return Err(Failure::Usage(format!("unknown option {a}")));
            }
            let v = args
                .get(i + 1)
                .ok_or_else(|| Failure::Usage(format!("{a} needs a value")))?;
            opts.push((a.clone(), v.clone()));
            i += 2;
        } else {
            pos.push(a.clone());
            i += 1;
        }
    }
    Ok((pos, opts))
}

fn opt<'a>(opts: &'a [(String, String)], names: &[&str]) -> Option<&'a str> {
    opts.iter()
        .find(|(k, _)| names.contains(&k.as_str()))
        .map(|(_, v)| v.as_str())
}

fn input(path: Option<&str>) -> Result<Box<dyn std::io::BufRead>, Failure> {
    Ok(match path {
        Some(p) if p != "-" => Box::new(BufReader::with_capacity(
            256 * 1024,
            std::fs::File::open(p)
                .map_err(|e| Failure::Failed(udm_tenant::Error(format!("{p}: {e}"))))?,
        )),
        _ => Box::new(BufReader::with_capacity(
            256 * 1024,
            std::io::stdin().lock(),
        )),
    })
}

fn run(args: &[String]) -> Result<(), Failure> {
    let args: Vec<String> = args
        .iter()
        .filter(|a| {
            let v = *a == "-v" || *a == "--verbose";
            if v {
                udm_tenant::VERBOSE.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            !v
        })
        .cloned()
        .collect();
    let Some((cmd, rest)) = args.split_first() else {
        return Err(Failure::Usage("no command".into()));
    };
    match cmd.as_str() {
        "export" => {
            let (pos, opts) = parse(rest, &["-o", "--output"])?;
            let [conn, slug] = pos.as_slice() else {
                return Err(Failure::Usage("export needs CONNECTION and SLUG".into()));
            };
            let out: Box<dyn Write> = match opt(&opts, &["-o", "--output"]) {
                Some(p) if p != "-" => Box::new(
                    std::fs::File::create(p)
                        .map_err(|e| Failure::Failed(udm_tenant::Error(format!("{p}: {e}"))))?,
                ),
                _ => Box::new(std::io::stdout().lock()),
            };
            let mut client = udm_tenant::connect(conn)?;
            let out = BufWriter::with_capacity(256 * 1024, out);
            let e = udm_tenant::export(&mut client, slug, out)?;
            eprintln!(
                "udm-tenant: exported tenant {}: {} sections, {} rows, {} bytes of data",
                e.tenant, e.sections, e.rows, e.bytes
            );
            Ok(())
        }
        "import" => {
            let (pos, opts) = parse(rest, &["--as", "-i", "--input"])?;
            let [conn] = pos.as_slice() else {
                return Err(Failure::Usage("import needs CONNECTION".into()));
            };
            let mut client = udm_tenant::connect(conn)?;
            let done = udm_tenant::import(
                &mut client,
                input(opt(&opts, &["-i", "--input"]))?,
                opt(&opts, &["--as"]),
            )?;
            println!("{done}");
            Ok(())
        }
        "check" => {
            let (pos, opts) = parse(rest, &["-i", "--input"])?;
            if !pos.is_empty() {
                return Err(Failure::Usage("check takes no arguments".into()));
            }
            let c = udm_tenant::check(input(opt(&opts, &["-i", "--input"]))?)?;
            let m = &c.manifest;
            println!(
                "udm tenant archive: tenant {} (from database {}, udm {}, format {}), exported {}",
                m["tenant"]["slug"],
                m["source"]["database"],
                m["udm_version"],
                m["format_version"],
                m["exported_at"]
            );
            for (name, rows, bytes) in &c.sections {
                println!("  {name:<48} {rows:>12} rows {bytes:>14} bytes");
            }
            println!("ok: every section is complete and unchanged");
            Ok(())
        }
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => Err(Failure::Usage(format!("unknown command {other}"))),
    }
}
