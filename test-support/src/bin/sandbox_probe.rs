//! `weir-sandbox-probe [on|off] READABLE_DIR`: enters the same sandbox the
//! binaries use (`weir_conf::sandbox::apply` with `Rules::base()` and
//! READABLE_DIR), then tries what the sandbox must refuse and what it must
//! allow, printing one `name=ok|refused (error)` line each; tests read them.

use std::io::Read as _;

fn outcome<T>(r: std::io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".to_owned(),
        Err(e) => format!("refused ({e})"),
    }
}

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let mode = args
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(weir_conf::sandbox::Mode::On);
    let Some(readable) = args.next() else {
        eprintln!("usage: weir-sandbox-probe on|off|auto READABLE_DIR");
        return std::process::ExitCode::FAILURE;
    };
    let rules = weir_conf::sandbox::Rules::base().read(&readable);
    match weir_conf::sandbox::apply(mode, &rules, false) {
        Ok(report) => println!(
            "applied no_new_privs={} landlock={} seccomp={}",
            report.no_new_privs, report.landlock, report.seccomp
        ),
        Err(e) => {
            eprintln!("weir-sandbox-probe: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    let status = weir_conf::sandbox::proc_status("self");
    println!("status={status:?}");
    println!(
        "read_passwd={}",
        outcome(std::fs::File::open("/etc/passwd").and_then(|mut f| {
            let mut s = String::new();
            f.read_to_string(&mut s)
        }))
    );
    println!(
        "read_allowed={}",
        outcome(std::fs::read_dir(&readable).map(|d| d.count()))
    );
    println!(
        "write_allowed_dir={}",
        outcome(std::fs::write(
            std::path::Path::new(&readable).join("probe-written"),
            b"x"
        ))
    );
    println!(
        "exec={}",
        outcome(std::process::Command::new("/bin/true").status())
    );
    std::process::ExitCode::SUCCESS
}
