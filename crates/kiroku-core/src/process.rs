//! The standard process metrics (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`, `process_start_time_seconds`),
//! read from `/proc/self` at each scrape. Elsewhere than Linux they are left out.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second of `/proc` times (`USER_HZ`, 100 on every Linux ABI Kiroku
/// runs on).
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug)]
pub(crate) struct ProcessCollector;

/// What one scrape reads.
#[derive(Debug, Default, PartialEq)]
struct Sample {
    cpu_seconds: f64,
    resident_bytes: f64,
    open_fds: f64,
    start_time_seconds: f64,
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(sample) = read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(sample.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                sample.resident_bytes,
            ),
            ("process_open_fds", "Open file descriptors", sample.open_fds),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds",
                sample.start_time_seconds,
            ),
        ] {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

fn read() -> Option<Sample> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
    parse(&stat, &status, &boot, open_fds)
}

/// Parses `/proc/self/stat` (fields after the command name, which may hold spaces and
/// parentheses), `VmRSS` of `/proc/self/status` and `btime` of `/proc/stat`.
fn parse(stat: &str, status: &str, boot: &str, open_fds: usize) -> Option<Sample> {
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the name: state is field 3 of proc(5), so field n is fields[n - 3].
    let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
    let (utime, stime, start_ticks) = (field(14)?, field(15)?, field(22)?);
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<f64>().ok())?;
    let btime = boot
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|s| s.trim().parse::<f64>().ok())?;
    Some(Sample {
        cpu_seconds: (utime + stime) / TICKS_PER_SECOND,
        resident_bytes: rss_kib * 1024.0,
        open_fds: open_fds as f64,
        start_time_seconds: btime + start_ticks / TICKS_PER_SECOND,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse_even_with_odd_command_names() {
        let stat = "4242 (kiroku (serve) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 12 0 123400 1000000 2000 18446744073709551615";
        let status = "Name:\tkiroku\nVmPeak:\t  9000 kB\nVmRSS:\t    2048 kB\n";
        let boot = "cpu  1 2 3\nbtime 1764800000\nprocesses 10\n";
        let sample = parse(stat, status, boot, 7).expect("parsed");
        assert_eq!(
            sample,
            Sample {
                cpu_seconds: 3.0,
                resident_bytes: 2048.0 * 1024.0,
                open_fds: 7.0,
                start_time_seconds: 1_764_800_000.0 + 1234.0,
            }
        );
        assert!(parse("garbage", status, boot, 1).is_none());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_described() {
        let text = crate::metrics::render();
        for line in [
            "# TYPE process_cpu_seconds_total counter",
            "# TYPE process_resident_memory_bytes gauge",
            "# TYPE process_open_fds gauge",
            "# TYPE process_start_time_seconds gauge",
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
    }
}
