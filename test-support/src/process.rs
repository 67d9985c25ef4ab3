//! What the launchers of real binaries ([`crate::Weir`], [`crate::Engine`])
//! share: waiting for the launch line, signals, waiting for the exit.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command};
use std::time::Duration;

use anyhow::bail;

/// Reads `stdout` until a line starting with `prefix` (a launch line such as
/// `weir listening ...`), at most `limit`; `None` when the output ends (the
/// process exited) or the limit passes first. The rest of the output keeps
/// being read, so the process never blocks on a full pipe.
pub(crate) async fn launch_line(
    stdout: ChildStdout,
    prefix: &'static str,
    limit: Duration,
) -> Option<String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A plain thread, not the runtime's blocking pool: it lives as long as
    // the process, and a runtime waits for its blocking tasks on drop.
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
        let line = lines.by_ref().find(|l| l.starts_with(prefix));
        let _ = tx.send(line);
        lines.for_each(drop);
    });
    tokio::time::timeout(limit, rx).await.ok()?.ok()?
}

/// Sends `signal` (e.g. `"TERM"`) to `child`.
pub(crate) fn signal(child: &Child, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()?;
    if !status.success() {
        bail!("kill -{signal} {} failed", child.id());
    }
    Ok(())
}

/// Waits (at most `limit`) for `child` to exit; its exit code.
pub(crate) async fn wait_exit(child: &mut Child, limit: Duration) -> anyhow::Result<Option<i32>> {
    let exited = crate::eventually(limit, || std::future::ready(child.try_wait().transpose()))
        .await
        .map_err(|_| anyhow::anyhow!("process {} still running after {limit:?}", child.id()))?;
    Ok(exited?.code())
}

/// Kills `child` and reaps it (for `Drop`).
pub(crate) fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}
