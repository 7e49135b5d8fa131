//! Running the kernel tools: a trait so apply logic can be tested with a fake,
//! and the real implementation on `std::process::Command`.

use std::io::{self, Read, Write};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// What a finished command left behind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    /// Captured standard output.
    pub stdout: String,
    /// Captured standard error.
    pub stderr: String,
}

impl Output {
    /// A successful, silent command.
    pub fn ok(stdout: impl Into<String>) -> Self {
        Self {
            code: Some(0),
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    /// Whether it exited with 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs one command to completion. `Err` only when it could not be run at all;
/// a non-zero exit is an [`Output`] for the caller to judge.
pub trait Runner {
    /// Runs `program args...`, feeding `stdin` when given.
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> io::Result<Output>;
}

impl<R: Runner + ?Sized> Runner for &R {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> io::Result<Output> {
        (**self).run(program, args, stdin)
    }
}

/// The real runner, optionally inside a named network namespace (`ip netns exec NAME`).
#[derive(Clone, Debug)]
pub struct CommandRunner {
    netns: Option<String>,
    timeout: Duration,
}

impl Default for CommandRunner {
    fn default() -> Self {
        Self::new()
    }
}

impl CommandRunner {
    /// Runs commands in the current network namespace, each bounded by 30 s.
    pub fn new() -> Self {
        Self {
            netns: None,
            timeout: Duration::from_secs(30),
        }
    }

    /// Runs every command through `ip netns exec name`.
    #[must_use]
    pub fn in_netns(mut self, name: impl Into<String>) -> Self {
        self.netns = Some(name.into());
        self
    }

    /// Changes the per-command time limit; a command over it is killed.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]).args(args);
                c
            }
            None => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
        }
    }
}

impl Runner for CommandRunner {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> io::Result<Output> {
        let mut cmd = self.command(program, args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        tracing::trace!(program, ?args, netns = ?self.netns, "running");
        let mut child = cmd.spawn()?;
        let out = drain(child.stdout.take());
        let err = drain(child.stderr.take());
        // Written from a thread so a tool that stops reading cannot outlast the timeout;
        // one that exits early closes the pipe, and its exit status tells why.
        let writer = match (stdin, child.stdin.take()) {
            (Some(input), Some(mut pipe)) => {
                let input = input.to_owned();
                Some(thread::spawn(move || {
                    let _ = pipe.write_all(input.as_bytes());
                }))
            }
            _ => None,
        };
        let code = wait_bounded(&mut child, self.timeout)?;
        if let Some(w) = writer {
            let _ = w.join();
        }
        Ok(Output {
            code,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        })
    }
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut p) = pipe {
            let mut buf = Vec::new();
            let _ = p.read_to_end(&mut buf);
            s = String::from_utf8_lossy(&buf).into_owned();
        }
        s
    })
}

fn wait_bounded(child: &mut Child, timeout: Duration) -> io::Result<Option<i32>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.code());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("killed after {timeout:?}"),
            ));
        }
        thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_stdin_and_captures_output() {
        let r = CommandRunner::new();
        let out = r.run("cat", &[], Some("hello\n")).expect("cat runs");
        assert!(out.success());
        assert_eq!(out.stdout, "hello\n");
        let out = r
            .run("sh", &["-c", "echo oops >&2; exit 3"], None)
            .expect("sh runs");
        assert_eq!((out.code, out.stderr.as_str()), (Some(3), "oops\n"));
    }

    #[test]
    fn kills_commands_over_the_limit() {
        let r = CommandRunner::new().with_timeout(Duration::from_millis(100));
        let err = r.run("sleep", &["5"], None).expect_err("times out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
