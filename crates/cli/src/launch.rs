//! `--nproc-per-node N` (`ddpm train`, `ddpm sample`, `ddpm eval fid`): torchrun's job on one
//! machine, without Python. Starts N copies of this command as ranks 0…N-1 (torchrun's
//! variables, a free port on 127.0.0.1), forwards stop signals to them, and fails as a whole
//! when one fails. Also the per-rank device and threads of a launch, however it was started.
//!
//! - Each rank runs in a process group of its own, so that a terminal's Ctrl-C reaches the
//!   launcher alone, which forwards it once to every rank (twice would make them quit without a
//!   checkpoint). SIGINT, SIGTERM, SIGHUP (unless ignored, as under `nohup`) and SIGUSR1 are
//!   forwarded; the ranks agree on the step to stop after, and rank 0 writes one checkpoint.
//! - The ranks die with the launcher (`PR_SET_PDEATHSIG` with SIGTERM), even when it is killed
//!   with SIGKILL.
//! - When a rank exits with an error or is killed, the launcher names it, sends SIGTERM (and
//!   SIGCONT, for a stopped rank) to the others, SIGKILL after a grace period, and exits with
//!   status 1, naming the work it launched ("data-parallel sampling failed"); for `ddpm train`
//!   it first prints where each rank was ([`crate::elastic`]). When the ranks ended because
//!   the launcher forwarded a stop signal (a Ctrl-C to `ddpm sample`, a second one to `ddpm
//!   train`), it says so and exits as the shell reports that signal, 128 + its number.
//! - With `--max-restarts R` (`ddpm train`), it starts all the ranks again instead, up to R
//!   times, with `TORCHELASTIC_RESTART_COUNT` set as torchrun sets it: they continue from the
//!   run's newest complete checkpoint. A stop signal to the launcher is never followed by a
//!   restart.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::device::DeviceSpec;
use anyhow::{bail, Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGKILL, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;
use torch_ext::dist::LaunchEnv;

/// Set in the environment of the ranks the launcher starts (to the rank): they ignore
/// `--nproc-per-node`, which they inherit with the rest of the command line.
const RANK_OF_LAUNCHER: &str = "DDPM_RANK_OF_LAUNCHER";

/// How long the other ranks get to exit after one failed, before SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// Whether this process is a rank that `--nproc-per-node` started.
pub fn is_launched_rank() -> bool {
    std::env::var_os(RANK_OF_LAUNCHER).is_some()
}

/// `exited with status 1`, `was killed by signal 9 (SIGKILL)`.
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => {
            let name = match signal {
                SIGKILL => " (SIGKILL)",
                SIGTERM => " (SIGTERM)",
                SIGINT => " (SIGINT)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGABRT => " (SIGABRT)",
                _ => "",
            };
            format!("was killed by signal {signal}{name}")
        }
        _ => format!("ended ({status})"),
    }
}

/// The device of a process: `--device` alone; in a launch, `cuda:LOCAL_RANK` for `--device cuda`
/// or `auto` with CUDA, else the CPU.
///
/// # Errors
/// When CUDA is asked for and missing, `--device cuda:N` with N > 0 in a launch, or more ranks
/// on this machine than GPUs.
pub fn rank_device(spec: DeviceSpec, env: Option<&LaunchEnv>) -> Result<tch::Device> {
    let Some(env) = env else {
        return Ok(spec.resolve()?);
    };
    let cuda = match spec {
        DeviceSpec::Cpu => false,
        DeviceSpec::Auto => tch::Cuda::is_available(),
        DeviceSpec::Cuda(0) => {
            spec.resolve()?;
            true
        }
        DeviceSpec::Cuda(index) => bail!(
            "--device cuda:{index}: each rank of a data-parallel run takes cuda:LOCAL_RANK; pass \
             --device cuda"
        ),
    };
    if !cuda {
        return Ok(tch::Device::Cpu);
    }
    let count = tch::Cuda::device_count() as usize;
    if env.local_rank >= count || env.local_world_size > count {
        bail!(
            "{} ranks on this machine (LOCAL_WORLD_SIZE) need {} GPUs, one each, but only {count} \
             CUDA device(s) are visible (this rank's LOCAL_RANK is {}): start fewer ranks per \
             machine, or pass --device cpu",
            env.local_world_size,
            env.local_world_size,
            env.local_rank
        );
    }
    Ok(tch::Device::Cuda(env.local_rank))
}

/// Sets libtorch's intra-op threads: `--threads` when given; in a launch on the CPU, the
/// machine's threads divided among its ranks (`LOCAL_WORLD_SIZE`), at least 1.
pub fn set_rank_threads(threads: Option<i32>, env: Option<&LaunchEnv>, device: tch::Device) {
    match (threads, env) {
        (Some(n), _) => tch::set_num_threads(n),
        (None, Some(env)) if device == tch::Device::Cpu => {
            let per_rank = (tch::get_num_threads() as usize / env.local_world_size.max(1)).max(1);
            tch::set_num_threads(per_rank as i32);
        }
        _ => {}
    }
}

/// The ranks, killed if the launcher returns early (a failed spawn, an error).
struct Ranks(Vec<Child>);

impl Ranks {
    /// Starts this command as ranks 0…n-1, meeting on 127.0.0.1:`port`, the `restart`-th time.
    fn spawn(n: usize, port: u16, restart: u32) -> Result<Self> {
        let exe = std::env::current_exe().context("cannot find the ddpm executable")?;
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        let mut ranks = Self(Vec::with_capacity(n));
        for rank in 0..n {
            let child = rank_command(&exe, &args, rank, n, port)
                .env(crate::elastic::RESTART_COUNT_VAR, restart.to_string())
                .spawn()
                .with_context(|| format!("cannot start rank {rank} ({})", exe.display()))?;
            ranks.0.push(child);
        }
        Ok(ranks)
    }

    fn signal_all(&self, signal: i32, except: Option<usize>) {
        for (rank, child) in self.0.iter().enumerate() {
            if Some(rank) != except {
                // SAFETY: kill(2) on a PID we started; an exited child makes it fail harmlessly.
                unsafe { libc::kill(child.id() as libc::pid_t, signal) };
            }
        }
    }

    /// Waits until every rank has exited or one has failed; returns the first that failed.
    /// `done` records the ranks that exited.
    fn wait_first_failure(
        &mut self,
        done: &mut [Option<ExitStatus>],
    ) -> Result<Option<(usize, ExitStatus)>> {
        loop {
            let mut failed = None;
            for (rank, child) in self.0.iter_mut().enumerate() {
                if done[rank].is_none() {
                    if let Some(status) = child.try_wait().context("waiting for the ranks")? {
                        done[rank] = Some(status);
                        if !status.success() && failed.is_none() {
                            failed = Some((rank, status));
                        }
                    }
                }
            }
            if failed.is_some() || done.iter().all(Option::is_some) {
                return Ok(failed);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM to the ranks but `failed` that are still running (those not in `done`),
    /// and SIGKILL to any still running after [`GRACE`].
    fn stop_others(&mut self, failed: usize, done: &mut [Option<ExitStatus>]) -> Result<()> {
        self.signal_all(SIGTERM, Some(failed));
        // A stopped rank (SIGSTOP) acts on the SIGTERM once it runs again.
        self.signal_all(libc::SIGCONT, Some(failed));
        let deadline = Instant::now() + GRACE;
        for (other, child) in self.0.iter_mut().enumerate() {
            while done[other].is_none() {
                if let Some(status) = child.try_wait().context("waiting for the ranks")? {
                    done[other] = Some(status);
                } else if Instant::now() > deadline {
                    eprintln!("rank {other} did not stop within {GRACE:?}: killing it");
                    let _ = child.kill();
                    done[other] = child.wait().ok();
                } else {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        Ok(())
    }
}

impl Drop for Ranks {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The command of rank `rank` of `n`: this executable with `args` and torchrun's variables, in
/// a process group of its own, dying with the launcher.
fn rank_command(
    exe: &std::path::Path,
    args: &[std::ffi::OsString],
    rank: usize,
    n: usize,
    port: u16,
) -> Command {
    // SAFETY: getpid has no preconditions.
    let launcher_pid = unsafe { libc::getpid() };
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", n.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("LOCAL_WORLD_SIZE", n.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env_remove("TORCHELASTIC_USE_AGENT_STORE")
        .env(RANK_OF_LAUNCHER, rank.to_string())
        .stdin(Stdio::null());
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    #[cfg(target_os = "linux")]
    // SAFETY: between fork and exec only async-signal-safe calls (signal, prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            // The launcher handles the stop signals whatever it started with and forwards them:
            // a rank must not inherit an ignored one (a shell starts a background job with
            // SIGINT ignored), or a forwarded Ctrl-C would not stop a sampling rank. SIGHUP
            // keeps its disposition: an ignored one is not forwarded (`nohup`).
            for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGUSR1] {
                if libc::signal(signal, libc::SIG_DFL) == libc::SIG_ERR {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The launcher died before prctl took effect.
            if libc::getppid() != launcher_pid {
                return Err(std::io::Error::other("the launcher is gone"));
            }
            Ok(())
        });
    }
    cmd
}

/// Refuses a launch that cannot start: `n` is 0, torchrun's variables are already set, or
/// `n` exceeds the GPUs on CUDA.
fn check_launch(n: usize, device: DeviceSpec) -> Result<()> {
    if n == 0 {
        bail!("--nproc-per-node 0: start at least one rank");
    }
    if std::env::var_os("WORLD_SIZE").is_some() {
        bail!(
            "--nproc-per-node starts ranks itself, but WORLD_SIZE is set (torchrun?): drop \
             --nproc-per-node, or run `ddpm train --nproc-per-node N` outside torchrun"
        );
    }
    let cuda = match device {
        DeviceSpec::Cpu => false,
        DeviceSpec::Auto => tch::Cuda::is_available(),
        DeviceSpec::Cuda(0) => {
            device.resolve()?;
            true
        }
        DeviceSpec::Cuda(index) => bail!(
            "--device cuda:{index} with --nproc-per-node: rank r takes cuda:r; pass --device cuda"
        ),
    };
    if cuda {
        let count = tch::Cuda::device_count() as usize;
        if n > count {
            bail!(
                "--nproc-per-node {n} on CUDA needs {n} GPUs, one per rank, but this machine has \
                 {count}: lower --nproc-per-node, or pass --device cpu"
            );
        }
    }
    Ok(())
}

/// Forwards SIGINT, SIGTERM, SIGUSR1 and (unless ignored) SIGHUP to `ranks` from a thread of
/// its own, until the returned handle is closed.
fn forward_signals(
    ranks: &Ranks,
    stopping: Arc<AtomicI32>,
) -> Result<signal_hook::iterator::Handle> {
    let mut wanted = vec![SIGINT, SIGTERM, SIGUSR1];
    if !crate::signals::is_ignored(SIGHUP) {
        wanted.push(SIGHUP);
    }
    let mut signals = Signals::new(&wanted).context("cannot install the signal handlers")?;
    let child_pids: Vec<libc::pid_t> = ranks.0.iter().map(|c| c.id() as libc::pid_t).collect();
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("forward-signals".into())
        .spawn(move || {
            // Forwarded once per request: a rank takes a second one as "quit now".
            let mut requests = crate::signals::Requests::default();
            for signal in signals.forever() {
                if !requests.is_new(signal, Instant::now()) {
                    continue;
                }
                stopping.store(signal, Ordering::SeqCst);
                for &pid in &child_pids {
                    // SAFETY: kill(2) on PIDs we started.
                    unsafe { libc::kill(pid, signal) };
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(handle)
}

/// What `--nproc-per-node` starts.
#[derive(Debug, Clone, Copy)]
pub struct LaunchPlan<'a> {
    /// The work the ranks do, as the launcher's messages name it: "training", "sampling",
    /// "evaluation".
    pub work: &'static str,
    /// The number of ranks.
    pub n: usize,
    /// `--device`.
    pub device: DeviceSpec,
    /// `--max-restarts`: how many times all the ranks start again after one fails.
    pub max_restarts: u32,
    /// `ddpm train`'s run directory, whose `ranks/` folder says where each rank was.
    pub run_dir: Option<&'a Path>,
}

/// Runs this command as `n` ranks on this machine doing `work` ("sampling", say, for the
/// launcher's messages) and waits for them.
///
/// # Errors
/// As [`launch_with`].
pub fn launch(n: usize, device: DeviceSpec, work: &'static str) -> Result<()> {
    launch_with(LaunchPlan {
        work,
        n,
        device,
        max_restarts: 0,
        run_dir: None,
    })
}

/// Runs this command as `plan.n` ranks on this machine and waits for them, starting them all
/// again up to `plan.max_restarts` times when one fails.
///
/// # Errors
/// Before starting anything: `n` is 0, torchrun's variables are already set, or `n` exceeds
/// the GPUs on CUDA. After: when a rank fails (naming it) and no restart is left, or the
/// launcher was asked to stop and a rank did not exit 0 ([`crate::signals::Stopped`]).
pub fn launch_with(plan: LaunchPlan<'_>) -> Result<()> {
    check_launch(plan.n, plan.device)?;
    // The last stop signal forwarded to the ranks, 0 before any.
    let stopping = Arc::new(AtomicI32::new(0));
    let mut restart = 0;
    loop {
        let Some((rank, status)) = attempt(&plan, restart, &stopping)? else {
            return Ok(());
        };
        let signal = stopping.load(Ordering::SeqCst);
        if signal != 0 {
            return Err(crate::signals::Stopped {
                signal,
                work: plan.work,
                detail: format!("rank {rank} {}", describe(status)),
            }
            .into());
        }
        if restart < plan.max_restarts {
            restart += 1;
            eprintln!(
                "restart {restart} of {} (--max-restarts): starting all {} ranks again; they \
                 continue from the newest complete checkpoint",
                plan.max_restarts, plan.n
            );
            continue;
        }
        let left = match plan.max_restarts {
            0 => String::new(),
            max => format!(" (after {restart} of {max} restarts)"),
        };
        bail!(
            "data-parallel {} failed: rank {rank} {}{left}",
            plan.work,
            describe(status)
        )
    }
}

/// One start of the ranks: `None` when all of them succeed, else the first that failed (the
/// others stopped, and where each rank was printed).
fn attempt(
    plan: &LaunchPlan<'_>,
    restart: u32,
    stopping: &Arc<AtomicI32>,
) -> Result<Option<(usize, ExitStatus)>> {
    let n = plan.n;
    if let Some(run_dir) = plan.run_dir {
        for rank in 0..n {
            let _ = std::fs::remove_file(train::elastic::report_path(run_dir, rank));
        }
    }
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .context("no free port on 127.0.0.1 for the ranks to meet on")?;
    let mut ranks = Ranks::spawn(n, port, restart)?;
    let pids: Vec<String> = ranks
        .0
        .iter()
        .enumerate()
        .map(|(rank, c)| format!("rank {rank} PID {}", c.id()))
        .collect();
    eprintln!(
        "--nproc-per-node {n}: ranks meet on 127.0.0.1:{port} ({})",
        pids.join(", ")
    );
    let handle = forward_signals(&ranks, Arc::clone(stopping))?;
    let mut done: Vec<Option<ExitStatus>> = vec![None; n];
    let failed = ranks.wait_first_failure(&mut done);
    handle.close();
    let Some((rank, status)) = failed? else {
        return Ok(None);
    };
    eprintln!(
        "rank {rank} (PID {}) {}; stopping the other ranks",
        ranks.0[rank].id(),
        describe(status)
    );
    // Where each rank was when the failure reached the launcher: a stopped rank's record is
    // read before the SIGCONT of `stop_others` lets it move on.
    let places = plan.run_dir.map(|run_dir| {
        let places: Vec<_> = (0..n)
            .map(|r| crate::elastic::rank_where(run_dir, r, ranks.0[r].id()))
            .collect();
        (run_dir, places)
    });
    ranks.stop_others(rank, &mut done)?;
    if let Some((run_dir, mut places)) = places {
        crate::elastic::refresh(run_dir, &mut places);
        eprintln!("{}", crate::elastic::summary(run_dir, &places));
    }
    Ok(Some((rank, status)))
}
