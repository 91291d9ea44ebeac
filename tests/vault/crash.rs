//! The vault killed (SIGKILL) at random instants while callers create,
//! import, rotate and delete keys and encrypt with data keys: after every
//! kill it restarts, loads, and still holds everything it acknowledged.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vaultgate::client::{ClientError, VaultClient};
use vaultgate::protocol::{KeyType, Request};

use crate::common::vault::{Opts, VaultProc};

const KILLS: usize = 200;
const WORKERS: usize = 3;
/// A kill lands this long (at most) after the callers start.
const MAX_DELAY_MS: u64 = 40;
const MAX_LIVE_KEYS: usize = 30;

/// What the test knows the vault must hold: only what it acknowledged, plus
/// what a restart showed to be on disk.
#[derive(Default)]
struct Model {
    keys: BTreeMap<String, KeyModel>,
    sealed: Vec<Sealed>,
    next_name: u32,
    acked: BTreeMap<&'static str, u32>,
    /// Calls cut off by a kill, whose outcome the next restart decides.
    interrupted: u32,
    /// Keys a restart showed deleted by the vault's housekeeping.
    deleted: u32,
}

struct KeyModel {
    key_type: KeyType,
    /// Its create or import was answered (or a restart showed it).
    exists: bool,
    /// The primary version as of the last answer or restart.
    primary: u32,
    /// Calls that may have added a version without being answered.
    maybe_versions: u32,
    /// Imported versions' SubjectPublicKeyInfo, by version; a version
    /// whose import was cut off is listed under its would-be number.
    imported: BTreeMap<u32, Vec<u8>>,
    deletion: Deletion,
    /// Some caller is working on it.
    busy: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Deletion {
    No,
    /// Asked, not answered: either outcome is fine.
    Maybe,
    /// Answered: pending deletion or deleted, never back.
    Scheduled,
    /// A restart showed it gone: it must stay gone.
    Gone,
}

impl KeyModel {
    fn new(key_type: KeyType) -> KeyModel {
        KeyModel {
            key_type,
            exists: false,
            primary: 0,
            maybe_versions: 1,
            imported: BTreeMap::new(),
            deletion: Deletion::No,
            busy: true,
        }
    }
}

/// An acknowledged ciphertext: (key, blob, plaintext, context).
type Sealed = (String, Vec<u8>, Vec<u8>, Vec<u8>);
/// An imported version to check: (key, version, SPKI).
type Imported = (String, u32, Vec<u8>);

fn lock(m: &Mutex<Model>) -> std::sync::MutexGuard<'_, Model> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh ECDSA P-256 key as PKCS#8 PEM, with its SPKI.
fn pem_key() -> (String, Vec<u8>) {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    (kp.serialize_pem(), kp.public_key_der())
}

/// The version a describe/create/rotate/import answer names as primary.
fn primary_of(json: &serde_json::Value) -> u32 {
    json["primary"].as_u64().expect("primary") as u32
}

/// Whether a failed call failed because the vault died (fine: the kill)
/// rather than because the vault refused (a bug in the vault or the test).
fn killed(e: &ClientError) -> bool {
    e.code().is_none()
}

/// One caller: random operations until the vault goes away.
async fn worker(c: VaultClient, model: Arc<Mutex<Model>>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    loop {
        let roll = rng.gen_range(0..100);
        // Choose under the lock, call without it.
        let step = {
            let mut m = lock(&model);
            let live: Vec<String> = m
                .keys
                .iter()
                .filter(|(_, k)| k.exists && !k.busy && k.deletion == Deletion::No)
                .map(|(n, _)| n.clone())
                .collect();
            let pick = |rng: &mut StdRng, f: &dyn Fn(&KeyModel) -> bool, m: &Model| {
                let c: Vec<&String> = live.iter().filter(|n| f(&m.keys[*n])).collect();
                (!c.is_empty()).then(|| c[rng.gen_range(0..c.len())].clone())
            };
            let step = if live.len() >= MAX_LIVE_KEYS || (roll < 10 && !live.is_empty()) {
                // AES keys, whose ciphertexts are checked, are deleted less.
                let any = roll < 2;
                pick(&mut rng, &|k| any || k.key_type != KeyType::Aes256, &m)
                    .or_else(|| pick(&mut rng, &|_| live.len() >= MAX_LIVE_KEYS, &m))
                    .map(|k| ("delete", k))
            } else if roll < 35 {
                let t =
                    [KeyType::EcdsaP256, KeyType::Ed25519, KeyType::Aes256][rng.gen_range(0..3)];
                m.next_name += 1;
                let name = format!("k{}-{}", m.next_name, t.name());
                m.keys.insert(name.clone(), KeyModel::new(t));
                Some(("create", name))
            } else if roll < 45 {
                m.next_name += 1;
                let name = format!("k{}-imported", m.next_name);
                m.keys
                    .insert(name.clone(), KeyModel::new(KeyType::EcdsaP256));
                Some(("import", name))
            } else if roll < 55 {
                pick(&mut rng, &|k| !k.imported.is_empty(), &m).map(|k| ("import-version", k))
            } else if roll < 80 {
                pick(&mut rng, &|_| true, &m).map(|k| ("rotate", k))
            } else {
                pick(&mut rng, &|k| k.key_type == KeyType::Aes256, &m).map(|k| ("encrypt", k))
            };
            if let Some((op, name)) = &step {
                let k = m.keys.get_mut(name).expect("picked key");
                k.busy = true;
                match *op {
                    "delete" => {
                        k.deletion = Deletion::Maybe;
                        m.sealed.retain(|s| &s.0 != name);
                    }
                    "rotate" | "import-version" => k.maybe_versions += 1,
                    _ => {}
                }
            }
            step
        };
        let Some((op, name)) = step else {
            tokio::task::yield_now().await;
            continue;
        };
        let result: Result<(), ClientError> = async {
            match op {
                "create" => {
                    let t = lock(&model).keys[&name].key_type;
                    let d = c
                        .json(&Request::Create {
                            key: name.clone(),
                            key_type: t,
                            rotate_every: None,
                        })
                        .await?;
                    let mut m = lock(&model);
                    let k = m.keys.get_mut(&name).expect("model");
                    (k.exists, k.primary, k.maybe_versions) = (true, primary_of(&d), 0);
                }
                "import" | "import-version" => {
                    let (pem, spki) = pem_key();
                    let next = {
                        let mut m = lock(&model);
                        let k = m.keys.get_mut(&name).expect("model");
                        let next = if op == "import" { 1 } else { k.primary + 1 };
                        k.imported.insert(next, spki);
                        next
                    };
                    let d = c
                        .json(&Request::Import {
                            key: name.clone(),
                            pem: zeroize::Zeroizing::new(pem.into_bytes()),
                            new_version: op == "import-version",
                        })
                        .await?;
                    assert_eq!(primary_of(&d), next, "{name}: import answered {d}");
                    let mut m = lock(&model);
                    let k = m.keys.get_mut(&name).expect("model");
                    (k.exists, k.primary, k.maybe_versions) = (true, next, 0);
                }
                "rotate" => {
                    let d = c.json(&Request::Rotate { key: name.clone() }).await?;
                    let mut m = lock(&model);
                    let k = m.keys.get_mut(&name).expect("model");
                    assert_eq!(primary_of(&d), k.primary + 1, "{name}: rotate answered {d}");
                    (k.primary, k.maybe_versions) = (k.primary + 1, 0);
                }
                "delete" => {
                    c.json(&Request::ScheduleDeletion {
                        key: name.clone(),
                        wait_secs: Some(0),
                    })
                    .await?;
                    lock(&model).keys.get_mut(&name).expect("model").deletion = Deletion::Scheduled;
                }
                "encrypt" => {
                    let plain: Vec<u8> = (0..rng.gen_range(1..300)).map(|_| rng.gen()).collect();
                    let ctx = format!("ctx-{}", rng.gen::<u16>()).into_bytes();
                    let (blob, plain) = if rng.gen_bool(0.5) {
                        (c.encrypt(&name, &plain, &ctx).await?, plain)
                    } else {
                        let (p, blob) = c.generate_data_key(&name, 32, &ctx).await?;
                        (blob, p.to_vec())
                    };
                    lock(&model).sealed.push((name.clone(), blob, plain, ctx));
                }
                _ => unreachable!(),
            }
            Ok(())
        }
        .await;
        let mut m = lock(&model);
        match result {
            Ok(()) => {
                *m.acked.entry(op).or_default() += 1;
                if let Some(k) = m.keys.get_mut(&name) {
                    k.busy = false;
                }
            }
            Err(e) if killed(&e) => {
                m.interrupted += 1;
                return;
            }
            Err(e) => panic!("{op} {name}: the vault refused: {e}"),
        }
    }
}

/// After a restart: the keystore loaded, nothing corrupt or half-written
/// shows, and every acknowledged change is there. Resolves what the kill
/// left undecided from what the vault now holds.
async fn check(c: &VaultClient, model: &Mutex<Model>, all_ciphertexts: bool, rng: &mut StdRng) {
    let listed = c.json(&Request::List).await.expect("list");
    let listed: BTreeMap<String, serde_json::Value> = listed
        .as_array()
        .expect("list is an array")
        .iter()
        .map(|e| (e["name"].as_str().expect("name").to_owned(), e.clone()))
        .collect();
    let (sealed, spki_checks) = resolve(&mut lock(model), &listed, all_ciphertexts, rng);
    let decrypts = sealed.iter().map(|(key, blob, plain, ctx)| async move {
        let (k, _, p) = c.decrypt(blob, ctx).await.unwrap_or_else(|e| {
            panic!("an acknowledged ciphertext of {key} does not decrypt: {e}")
        });
        assert_eq!((&k, p.as_slice()), (key, plain.as_slice()));
    });
    futures_util::future::join_all(decrypts).await;
    for (name, v, spki) in spki_checks {
        let (_, _, served) = c.public_key(&name, Some(v)).await.expect("public key");
        assert!(served == spki, "{name} version {v} is not the imported key");
    }
}

/// Checks the listing against the model and settles what the kill left
/// undecided; returns the ciphertexts and imported versions to check.
fn resolve(
    m: &mut Model,
    listed: &BTreeMap<String, serde_json::Value>,
    all_ciphertexts: bool,
    rng: &mut StdRng,
) -> (Vec<Sealed>, Vec<Imported>) {
    for (name, e) in listed {
        assert_ne!(e["state"], "corrupt", "{name} is corrupt after a kill: {e}");
        assert!(
            m.keys.contains_key(name),
            "{name} appeared from nowhere (a temp file picked up?)"
        );
    }
    let mut spki_checks = Vec::new();
    let mut deleted = 0;
    m.keys.retain(|name, k| {
        k.busy = false;
        let Some(e) = listed.get(name) else {
            match k.deletion {
                Deletion::Scheduled | Deletion::Maybe | Deletion::Gone => {
                    deleted += u32::from(k.deletion != Deletion::Gone);
                    k.deletion = Deletion::Gone;
                    return true;
                }
                Deletion::No => {}
            }
            assert!(!k.exists, "{name}: acknowledged, then lost by a kill");
            return false; // its create never happened
        };
        assert_ne!(
            k.deletion,
            Deletion::Gone,
            "{name}: deleted, then back after a kill"
        );
        assert_eq!(e["type"], k.key_type.name(), "{name}: {e}");
        let state = e["state"].as_str().expect("state");
        match (k.deletion, state) {
            (Deletion::Scheduled, s) => assert_eq!(s, "pending-deletion", "{name}"),
            (Deletion::Maybe, "pending-deletion") => k.deletion = Deletion::Scheduled,
            (_, s) => {
                assert_eq!(s, "enabled", "{name}");
                k.deletion = Deletion::No;
            }
        }
        let primary = e["primary"].as_u64().expect("primary") as u32;
        let versions = e["versions"].as_u64().expect("versions") as u32;
        assert_eq!(primary, versions, "{name}: versions are 1..=primary: {e}");
        assert!(
            primary >= k.primary && primary <= k.primary + k.maybe_versions,
            "{name}: primary {primary}, acknowledged {} with {} in doubt",
            k.primary,
            k.maybe_versions
        );
        (k.exists, k.primary, k.maybe_versions) = (true, primary, 0);
        k.imported.retain(|v, _| *v <= primary);
        if k.deletion != Deletion::Scheduled {
            for (v, spki) in &k.imported {
                spki_checks.push((name.clone(), *v, spki.clone()));
            }
        }
        true
    });
    m.deleted += deleted;
    let sealed: Vec<_> = if all_ciphertexts || m.sealed.len() <= 40 {
        m.sealed.clone()
    } else {
        (0..40)
            .map(|_| m.sealed[rng.gen_range(0..m.sealed.len())].clone())
            .collect()
    };
    (sealed, spki_checks)
}

fn temp_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
                .count()
        })
        .unwrap_or(0)
}

/// The operations the workers do, each of which must be seen acknowledged.
const OPS: [&str; 6] = [
    "create",
    "import",
    "import-version",
    "rotate",
    "delete",
    "encrypt",
];

#[test]
fn sigkill_at_random_instants_loses_nothing_acknowledged() {
    let seed: u64 = std::env::var("VG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed} (VG_SEED={seed} replays the same choices)");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut v = VaultProc::start_with(Opts {
        config: Some("[vault]\nmin_deletion_wait = \"0s\"\n".into()),
        ..Opts::default()
    });
    let rt = crate::rt();
    let model = Arc::new(Mutex::new(Model::default()));
    let started = Instant::now();
    let mut torn_writes = 0;
    // At least KILLS kills, and more (up to 3×) while the evidence that
    // kills landed inside operations is still thin: on a loaded machine
    // fewer operations fit between two kills.
    let enough = |m: &Model, torn: usize| {
        m.acked.values().sum::<u32>() >= 400
            && torn >= 5
            && m.deleted > 0
            && OPS
                .iter()
                .all(|op| m.acked.get(*op).copied().unwrap_or(0) > 0)
    };
    let mut round = 0;
    loop {
        let delay = Duration::from_millis(rng.gen_range(0..=MAX_DELAY_MS));
        rt.block_on(async {
            let c = VaultClient::connect(&v.socket)
                .await
                .expect("connect")
                .with_timeout(Duration::from_secs(20));
            let workers: Vec<_> = (0..WORKERS)
                .map(|w| {
                    tokio::spawn(worker(
                        c.clone(),
                        model.clone(),
                        seed ^ ((round * WORKERS + w) as u64) << 8,
                    ))
                })
                .collect();
            tokio::time::sleep(delay).await;
            v.kill9();
            for w in workers {
                if let Err(e) = w.await {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        });
        torn_writes += temp_files(&v.state.join("keys")) + temp_files(&v.state);
        v.restart();
        // The restarted vault's own writes (housekeeping finishing a
        // deletion) may be in flight: only a dead process's temp counts.
        let own = format!(".tmp-{}", v.child.id());
        let crashed = std::fs::read_dir(v.state.join("keys"))
            .expect("keys dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-") && !n.ends_with(&own))
            .collect::<Vec<_>>();
        assert!(
            crashed.is_empty(),
            "the restarted vault left a crashed write's temp file in keys/: {crashed:?}"
        );
        let last =
            round + 1 >= 3 * KILLS || (round + 1 >= KILLS && enough(&lock(&model), torn_writes));
        rt.block_on(async {
            let c = VaultClient::connect(&v.socket)
                .await
                .expect("connect after restart")
                .with_timeout(Duration::from_secs(20));
            check(&c, &model, last, &mut rng).await;
            if round % 50 == 49 || last {
                let r = c.json(&Request::AuditVerify).await;
                assert!(r.is_ok(), "audit chain after {} kills: {r:?}", round + 1);
            }
        });
        round += 1;
        if last {
            break;
        }
    }
    let elapsed = started.elapsed();
    let m = lock(&model);
    let total: u32 = m.acked.values().sum();
    eprintln!(
        "{round} kills in {elapsed:.1?}: {total} acknowledged operations {:?}, {} cut off by a kill, \
         {torn_writes} kills left a temp file behind, {} keys deleted by the vault, \
         {} ciphertexts and {} keys checked at the end",
        m.acked,
        m.interrupted,
        m.deleted,
        m.sealed.len(),
        m.keys.len()
    );
    // The kills must have landed inside operations, or this proves little.
    assert!(total >= 400, "only {total} operations were acknowledged");
    assert!(
        m.interrupted >= round as u32 / 2,
        "only {} operations were cut off by {round} kills",
        m.interrupted
    );
    assert!(m.deleted > 0, "no key was deleted between kills");
    assert!(
        torn_writes >= 5,
        "only {torn_writes} kills landed inside a keystore write"
    );
    for op in OPS {
        assert!(
            m.acked.get(op).copied().unwrap_or(0) > 0,
            "no {op} was acknowledged"
        );
    }
}
