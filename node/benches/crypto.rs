//! Segment encryption and decryption throughput of both AES-256-GCM
//! backends of `vmail_node::core::crypto`, as ratios to `openssl speed -evp
//! aes-256-gcm` (and its `-decrypt`) measured in the same run on the same
//! machine. The target is a ratio of at least 0.8.
//!
//! `cargo bench -p vmail-node --bench crypto`
//!
//! Each figure is the median of several samples over a 16 MiB voicemail,
//! repeated to take about three seconds; MB is 10^6 bytes. Before timing,
//! the two backends are checked to write the same bytes.

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use vmail_node::core::crypto::{self, Backend};
use vmail_proto::keys::SecretKey;

/// Plaintext size: a long voicemail.
const SIZE: usize = 16 << 20;
/// Samples per figure; the median is reported.
const SAMPLES: u32 = 7;
/// Time spent on each figure, like `openssl speed -seconds 3`.
const PER_FIGURE: Duration = Duration::from_secs(3);
/// The block size OpenSSL is asked to time: its largest standard one.
const OPENSSL_BLOCK: &str = "16384";
/// The ratio to OpenSSL the segment crypto should reach.
const TARGET: f64 = 0.8;

/// OpenSSL's AES-256-GCM MB/s on 16 KiB blocks, one core, wall clock.
fn openssl_mb_s(decrypt: bool) -> Result<f64, String> {
    let mut cmd = Command::new("openssl");
    cmd.args(["speed", "-mr", "-elapsed", "-seconds", "3", "-bytes"])
        .arg(OPENSSL_BLOCK);
    if decrypt {
        cmd.arg("-decrypt");
    }
    cmd.args(["-evp", "aes-256-gcm"]);
    let out = cmd
        .output()
        .map_err(|e| format!("could not run openssl ({e}); install it to get ratios"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // Machine-readable output: "+F:<n>:AES-256-GCM:<bytes per second>".
    text.lines()
        .filter(|l| l.starts_with("+F:"))
        .find_map(|l| l.rsplit(':').next()?.trim().parse::<f64>().ok())
        .map(|bytes_per_s| bytes_per_s / 1e6)
        .ok_or_else(|| {
            format!(
                "openssl speed printed no throughput ({}); ratios skipped",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
}

/// Median MB/s of `f`, which handles `bytes` per call, over `SAMPLES`
/// samples that together take about `PER_FIGURE`.
fn median_mb_s(bytes: usize, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    f(); // Warms up, and says how long one call takes.
    let one = t.elapsed().max(Duration::from_micros(1));
    let calls = ((PER_FIGURE / SAMPLES).as_secs_f64() / one.as_secs_f64()).max(1.0) as u32;
    let mut samples: Vec<f64> = (0..SAMPLES)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..calls {
                f();
            }
            let secs = t.elapsed().as_secs_f64().max(1e-9);
            f64::from(calls) * bytes as f64 / 1e6 / secs
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let key = SecretKey::random();
    let plaintext: Vec<u8> = (0..SIZE).map(|i| (i * 131 % 251) as u8).collect();
    let (id, prefix) = ([3u8; 16], [9u8; 7]);

    let sealed = crypto::encrypt_with(Backend::Ring, &key, id, prefix, &plaintext, &mut |_| {});
    let reference = crypto::encrypt_with(
        Backend::RustCrypto,
        &key,
        id,
        prefix,
        &plaintext,
        &mut |_| {},
    );
    assert!(
        sealed == reference,
        "ring and aes-gcm must write the same bytes"
    );
    assert_eq!(
        crypto::decrypt(&key, &id, &sealed, &mut |_| {}).as_deref(),
        Ok(&plaintext[..])
    );

    let openssl = [openssl_mb_s(false), openssl_mb_s(true)];
    let mut rows = Vec::new();
    for (name, backend) in [
        ("vmail, ring (default)", Backend::Ring),
        ("vmail, aes-gcm crate", Backend::RustCrypto),
    ] {
        let enc = median_mb_s(SIZE, || {
            black_box(crypto::encrypt_with(
                backend,
                &key,
                id,
                prefix,
                black_box(&plaintext),
                &mut |_| {},
            ));
        });
        let dec = median_mb_s(SIZE, || {
            black_box(
                crypto::decrypt_with(backend, &key, &id, black_box(&sealed), &mut |_| {})
                    .expect("decrypts"),
            );
        });
        rows.push((name, enc, dec));
    }

    println!(
        "segment crypto (AES-256-GCM STREAM, 64 KiB segments) on a 16 MiB voicemail, \
         median of {SAMPLES} samples over ~{}s; MB = 10^6 bytes",
        PER_FIGURE.as_secs()
    );
    println!("reproduce: cargo bench -p vmail-node --bench crypto");
    println!(
        "reference: openssl speed -mr -elapsed -seconds 3 -bytes {OPENSSL_BLOCK} [-decrypt] -evp aes-256-gcm"
    );
    println!();
    println!(
        "{:<26} {:>12} {:>8} {:>12} {:>8}",
        "implementation", "encrypt MB/s", "ratio", "decrypt MB/s", "ratio"
    );
    let ratio = |v: f64, r: &Result<f64, String>| match r {
        Ok(r) => format!("{:.2}", v / r),
        Err(_) => "-".to_owned(),
    };
    let mb = |r: &Result<f64, String>| match r {
        Ok(v) => format!("{v:.0}"),
        Err(_) => "-".to_owned(),
    };
    println!(
        "{:<26} {:>12} {:>8} {:>12} {:>8}",
        "openssl speed (reference)",
        mb(&openssl[0]),
        "1.00",
        mb(&openssl[1]),
        "1.00",
    );
    for (name, enc, dec) in &rows {
        println!(
            "{:<26} {:>12.0} {:>8} {:>12.0} {:>8}",
            name,
            enc,
            ratio(*enc, &openssl[0]),
            dec,
            ratio(*dec, &openssl[1]),
        );
    }
    println!();
    for (what, r) in ["encrypt", "decrypt"].iter().zip(&openssl) {
        if let Err(why) = r {
            println!("openssl {what}: {why}");
        }
    }
    let (name, enc, dec) = rows[0];
    for ((what, v), r) in [("encrypt", enc), ("decrypt", dec)]
        .into_iter()
        .zip(&openssl)
    {
        if let Ok(r) = r {
            let verdict = if v / r >= TARGET { "meets" } else { "misses" };
            println!(
                "{name}: {what} at {:.2} of openssl {verdict} the {TARGET} target",
                v / r
            );
        }
    }
}
