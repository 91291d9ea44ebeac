//! Signing through the vault versus signing in-process, with ring (the
//! issue's reference) and with aws-lc-rs (the library the vault signs
//! with, so the pair that shows what isolation costs), in the same run: one signature at a time (latency) and 64 in flight on one
//! connection (throughput). Starts the real `vaultgate vault` binary.
//!
//! Run: `cargo bench --bench vault_sign` (figures go to BENCHMARKS.md).

#![allow(
    clippy::too_many_lines,
    reason = "a test or bench scenario reads top to bottom"
)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use vaultgate::client::VaultClient;
use vaultgate::protocol::{scheme, Request};

mod support;

use support::{start_vault, Vault};

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let vault = start_vault();
    let client = rt.block_on(async {
        let c = VaultClient::connect(&vault.socket).await.expect("connect");
        for (name, t) in [("ec", "ecdsa-p256"), ("rsa", "rsa-2048")] {
            c.json(&Request::Create {
                key: name.into(),
                key_type: vaultgate::protocol::KeyType::from_name(t).expect("type"),
                rotate_every: None,
            })
            .await
            .expect("create");
        }
        c
    });
    // A TLS 1.3 CertificateVerify input is 64 spaces + context + 0 + hash: ~130 bytes.
    let message = vec![0x20u8; 130];
    let rng = SystemRandom::new();
    let ec_pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("ec");
    let ec = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, ec_pkcs8.as_ref(), &rng)
        .expect("ec");
    let rsa_der = {
        use rsa::pkcs8::EncodePrivateKey;
        let k = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("rsa");
        k.to_pkcs8_der().expect("der").as_bytes().to_vec()
    };
    let rsa = RsaKeyPair::from_pkcs8(&rsa_der).expect("rsa");
    let _ = ec.public_key();
    let aws_rng = aws_lc_rs::rand::SystemRandom::new();
    let aws_ec = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        ec_pkcs8.as_ref(),
    )
    .expect("ec");
    let aws_rsa = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&rsa_der).expect("rsa");
    let aws_sign = |alg: &str| {
        if alg == "rsa-2048" {
            let mut sig = vec![0; aws_rsa.public_modulus_len()];
            aws_rsa
                .sign(
                    &aws_lc_rs::signature::RSA_PSS_SHA256,
                    &aws_rng,
                    &message,
                    &mut sig,
                )
                .expect("sign");
            sig
        } else {
            aws_ec
                .sign(&aws_rng, &message)
                .expect("sign")
                .as_ref()
                .to_vec()
        }
    };

    for (alg, key, code) in [
        ("ecdsa-p256", "ec", scheme::ECDSA_P256_SHA256),
        ("rsa-2048", "rsa", scheme::RSA_PSS_SHA256),
    ] {
        let mut g = c.benchmark_group(format!("sign/{alg}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("ring-in-process", |b| {
            b.iter(|| {
                if alg == "rsa-2048" {
                    let mut sig = vec![0; rsa.public().modulus_len()];
                    rsa.sign(&ring::signature::RSA_PSS_SHA256, &rng, &message, &mut sig)
                        .expect("sign");
                    sig
                } else {
                    ec.sign(&rng, &message).expect("sign").as_ref().to_vec()
                }
            })
        });
        g.bench_function("aws-lc-in-process", |b| b.iter(|| aws_sign(alg)));
        g.bench_function("vault-one-at-a-time", |b| {
            b.to_async(&rt)
                .iter(|| async { client.sign(key, None, code, &message).await.expect("sign") })
        });
        let depth = 64;
        g.throughput(Throughput::Elements(depth));
        g.bench_with_input(
            BenchmarkId::new("vault-pipelined", depth),
            &depth,
            |b, &depth| {
                b.to_async(&rt).iter(|| async {
                    let mut waits = Vec::with_capacity(depth as usize);
                    for _ in 0..depth {
                        let c = client.clone();
                        let m = message.clone();
                        waits.push(tokio::spawn(
                            async move { c.sign(key, None, code, &m).await },
                        ));
                    }
                    for w in waits {
                        w.await.expect("join").expect("sign");
                    }
                })
            },
        );
        g.finish();
        let ring_sign = || {
            if alg == "rsa-2048" {
                let mut sig = vec![0; rsa.public().modulus_len()];
                let _ = rsa.sign(&ring::signature::RSA_PSS_SHA256, &rng, &message, &mut sig);
            } else {
                let _ = ec.sign(&rng, &message);
            }
        };
        let in_process: [(&str, &dyn Fn()); 2] = [
            ("ring", &ring_sign),
            ("aws-lc", &|| {
                aws_sign(alg);
            }),
        ];
        cpu_per_signature(&rt, &client, &vault, alg, key, code, &message, &in_process);
    }
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // fields after the ")" that ends the command name: utime is 14th overall
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    (ticks(11) + ticks(12)) / hz
}

/// The figure to trust on a shared machine: CPU time per signature, the
/// vault process's (everything it does for a signature: decode, policy,
/// sign, audit) against ring's in this process.
#[allow(clippy::too_many_arguments)]
fn cpu_per_signature(
    rt: &tokio::runtime::Runtime,
    client: &VaultClient,
    vault: &Vault,
    alg: &str,
    key: &'static str,
    code: u16,
    message: &[u8],
    in_process: &[(&str, &dyn Fn())],
) {
    let n: u32 = if alg == "rsa-2048" { 2_000 } else { 40_000 };
    let local: Vec<(&str, f64)> = in_process
        .iter()
        .map(|(name, sign)| {
            let t0 = cpu_time_self();
            for _ in 0..n {
                sign();
            }
            (*name, (cpu_time_self() - t0) * 1e6 / n as f64)
        })
        .collect();
    let before = cpu_seconds(vault.child.id());
    rt.block_on(async {
        let mut inflight = tokio::task::JoinSet::new();
        for i in 0..n {
            if inflight.len() >= 64 {
                inflight.join_next().await;
            }
            let (c, m) = (client.clone(), message.to_vec());
            inflight.spawn(async move { c.sign(key, None, code, &m).await.map(|_| i) });
        }
        while inflight.join_next().await.is_some() {}
    });
    let vault_us = (cpu_seconds(vault.child.id()) - before) * 1e6 / n as f64;
    let ratios: Vec<String> = local
        .iter()
        .map(|(name, us)| {
            format!(
                "{name} in-process {us:.1} us/sig (vault per core = {:.2} x)",
                us / vault_us
            )
        })
        .collect();
    println!(
        "cpu/{alg}: vault process {vault_us:.1} us/sig; {}",
        ratios.join("; ")
    );
}

fn cpu_time_self() -> f64 {
    cpu_seconds(std::process::id())
}

criterion_group! {
    name = vault_sign;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(4));
    targets = benches
}
criterion_main!(vault_sign);
