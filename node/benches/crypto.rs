//! Segment encryption and decryption throughput of both AES-256-GCM
//! backends, as ratios to `openssl speed -evp aes-256-gcm` measured in the
//! same run.
//!
//! `cargo bench -p vmail-node --bench crypto`

use std::time::{Duration, Instant};

use vmail_node::crypto::{self, Backend};
use vmail_proto::keys::SecretKey;

const SIZE: usize = 16 << 20;
const RUNS: usize = 7;

/// OpenSSL's AES-256-GCM MB/s at 16 KiB blocks, one core.
fn openssl_mb_s() -> Option<f64> {
    let out = std::process::Command::new("openssl")
        .args([
            "speed",
            "-evp",
            "aes-256-gcm",
            "-bytes",
            "16384",
            "-seconds",
            "3",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.starts_with("AES-256-GCM"))?;
    let k: f64 = line
        .split_whitespace()
        .last()?
        .trim_end_matches('k')
        .parse()
        .ok()?;
    Some(k * 1000.0 / 1e6)
}

/// Median MB/s of `f` over `RUNS` runs of `bytes` each.
fn median_mb_s(bytes: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm up
    let mut v: Vec<f64> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            f();
            bytes as f64 / 1e6 / t.elapsed().max(Duration::from_nanos(1)).as_secs_f64()
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[RUNS / 2]
}

fn main() {
    let key = SecretKey::random();
    let plaintext: Vec<u8> = (0..SIZE).map(|i| (i * 131 % 256) as u8).collect();
    let id = [3u8; 16];
    let reference = openssl_mb_s();
    println!("segment crypto, 16 MiB voicemail, 64 KiB segments, median of {RUNS} runs");
    println!("reproduce: cargo bench -p vmail-node --bench crypto\n");
    println!(
        "{:<36} {:>8} {:>11}",
        "implementation", "MB/s", "vs openssl"
    );
    match reference {
        Some(r) => println!(
            "{:<36} {r:>8.0} {:>11.2}",
            "openssl speed -evp aes-256-gcm", 1.0
        ),
        None => println!("openssl not found: ratios skipped"),
    }
    for (name, backend) in [
        ("ring", Backend::Ring),
        ("aes-gcm crate", Backend::RustCrypto),
    ] {
        let sealed = crypto::encrypt_with(backend, &key, id, [9; 7], &plaintext, &mut |_| {});
        let enc = median_mb_s(SIZE, || {
            std::hint::black_box(crypto::encrypt_with(
                backend,
                &key,
                id,
                [9; 7],
                &plaintext,
                &mut |_| {},
            ));
        });
        let dec = median_mb_s(SIZE, || {
            std::hint::black_box(
                crypto::decrypt_with(backend, &key, &id, &sealed, &mut |_| {}).expect("decrypts"),
            );
        });
        for (op, v) in [("encrypt", enc), ("decrypt", dec)] {
            let label = format!("vmail {op} ({name})");
            match reference {
                Some(r) => println!("{label:<36} {v:>8.0} {:>11.2}", v / r),
                None => println!("{label:<36} {v:>8.0}"),
            }
        }
    }
}
