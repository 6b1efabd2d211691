//! Running external programs. Every error names the command that failed, so
//! a broken lab step can be reproduced by hand.

use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

/// Runs a command that changes something, echoing it first so the log shows
/// what was done to the machine.
pub fn run(cmd: &mut Command) -> Result<()> {
    println!("+ {}", describe(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed: {status}", describe(cmd));
    }
    Ok(())
}

/// Runs a query and returns its standard output.
pub fn stdout_of(cmd: &mut Command) -> Result<String> {
    let output = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !output.status.success() {
        bail!("`{}` failed: {}", describe(cmd), output.status);
    }
    String::from_utf8(output.stdout)
        .with_context(|| format!("`{}` printed something that is not UTF-8", describe(cmd)))
}

/// Runs `stages[0] | stages[1] | ...` with the last stage writing to `sink`,
/// and fails if any stage fails (like `set -o pipefail`).
pub fn pipeline(stages: &mut [Command], sink: Stdio) -> Result<()> {
    let shown = stages.iter().map(describe).collect::<Vec<_>>().join(" | ");
    println!("+ {shown}");
    let last = stages.len() - 1;
    let mut children: Vec<Child> = Vec::with_capacity(stages.len());
    let mut sink = Some(sink);
    for (i, stage) in stages.iter_mut().enumerate() {
        if let Some(upstream) = children.last_mut().and_then(|c| c.stdout.take()) {
            stage.stdin(upstream);
        }
        let stdout = if i == last {
            sink.take().expect("the sink is used once")
        } else {
            Stdio::piped()
        };
        let child = stage
            .stdout(stdout)
            .spawn()
            .with_context(|| format!("cannot start `{}`", describe(stage)))?;
        children.push(child);
    }
    for (child, stage) in children.iter_mut().zip(stages.iter()) {
        let status = child.wait()?;
        if !status.success() {
            bail!("`{}` failed: {status} (in `{shown}`)", describe(stage));
        }
    }
    Ok(())
}

/// The command line as a shell would show it (without quoting).
pub fn describe(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}
