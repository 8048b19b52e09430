//! `ddpm doctor`: is libtorch the right version, is CUDA really linked, what devices are there.

use crate::device::DeviceSpec;
use crate::runtime::RuntimeInfo;
use anyhow::{bail, Result};

/// Arguments of `ddpm doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Also check that this device can be used (auto, cpu, cuda, cuda:N).
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
}

/// Runs `ddpm doctor`; fails when the installation has a problem or `--device` cannot be had.
pub fn run(args: DoctorArgs) -> Result<()> {
    let info = RuntimeInfo::collect();
    let mut problems = info.problems();
    let device = match args.device.resolve() {
        Ok(device) => Some(device),
        Err(err) => {
            problems.push(err.to_string());
            None
        }
    };
    if args.json {
        let mut value = serde_json::to_value(&info)?;
        value["device"] = serde_json::json!(device.map(|d| format!("{d:?}")));
        value["problems"] = serde_json::json!(problems);
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_text(&info, device);
    }
    match problems.len() {
        0 => Ok(()),
        _ => bail!("{}", problems.join("; ")),
    }
}

fn print_text(info: &RuntimeInfo, device: Option<tch::Device>) {
    let path = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .map_or("not found".to_string(), |p| p.display().to_string())
    };
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    println!("tch                 {}", info.tch_version);
    println!(
        "libtorch            {} (tch needs {})",
        info.libtorch_version.as_deref().unwrap_or("unknown"),
        info.expected_libtorch_version
    );
    println!("libtorch dir        {}", path(&info.libtorch_dir));
    println!("linked against      {}", path(&info.build_libtorch_dir));
    println!("libtorch has CUDA   {}", yes_no(info.libtorch_has_cuda));
    println!(
        "libtorch_cuda.so    {}",
        if info.libtorch_cuda_loaded {
            "loaded"
        } else {
            "not loaded"
        }
    );
    println!("CUDA available      {}", yes_no(info.cuda_available));
    println!("CUDA devices        {}", info.cuda_device_count);
    for d in &info.cuda_devices {
        println!(
            "  cuda:{}            {} ({:.1} GiB)",
            d.index,
            d.name,
            d.total_memory_bytes as f64 / (1u64 << 30) as f64
        );
    }
    println!("cuDNN available     {}", yes_no(info.cudnn_available));
    println!("CPU threads         {}", info.cpu_threads);
    if let Some(device) = device {
        println!("device              {device:?}");
    }
}
