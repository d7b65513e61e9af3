//! The off-site mirror: an asynchronous, resumable, verified copy of the primary repository's
//! objects in another S3 repository, which pgBackRest reads as a repository of its own (the
//! objects are the same bytes, encrypted by pgBackRest before they left the database's pod).
//! pgBackRest's own multi-repository mode is not used: one unreachable repository stalls WAL
//! archiving there, and a WAN outage must cost the province nothing locally.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use md5::{Digest, Md5};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{
    BackoffConfig, Certificate, ClientOptions, GetResult, ObjectStore, ObjectStoreExt, PutPayload,
    RetryConfig, WriteMultipart,
};

use crate::api::policy::{Repository, UriStyle};

/// A repository and the keys to reach it.
pub struct Access<'a> {
    pub repository: &'a Repository,
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub ca_pem: Option<&'a str>,
}

/// A bucket under the repository's path prefix.
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

/// Opens a repository's bucket. Requests give up within seconds, so an unreachable data center
/// makes a pass fail fast instead of hanging the controller.
pub fn open(access: &Access) -> Result<Bucket, String> {
    let s3 = &access.repository.s3;
    let mut options = ClientOptions::new()
        .with_timeout(Duration::from_secs(30))
        .with_connect_timeout(Duration::from_secs(5));
    if let Some(ca) = access.ca_pem {
        let certificate = Certificate::from_pem(ca.as_bytes()).map_err(|e| e.to_string())?;
        options = options
            .with_root_certificate(certificate)
            .with_no_system_certificates(true);
    }
    let retry = RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: 2,
        retry_timeout: Duration::from_secs(20),
    };
    let store = AmazonS3Builder::new()
        .with_endpoint(s3.endpoint.trim_end_matches('/'))
        .with_bucket_name(&s3.bucket)
        .with_region(&s3.region)
        .with_access_key_id(access.access_key_id)
        .with_secret_access_key(access.secret_access_key)
        .with_virtual_hosted_style_request(s3.uri_style == UriStyle::Host)
        .with_client_options(options)
        .with_retry(retry)
        .build()
        .map_err(|e| format!("{}: {e}", access.repository.name))?;
    Ok(Bucket {
        store: Arc::new(store),
        prefix: Path::from(s3.path_prefix.as_deref().unwrap_or("").trim_matches('/')),
    })
}

/// An object as a listing shows it, keyed relative to the repository's prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub size: u64,
    /// Unix seconds.
    pub modified: i64,
}

/// What one pass does, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Copy(String),
    /// An object pgBackRest writes once now differs in the primary from the verified copy the
    /// mirror holds: reported, never copied over the good one.
    Changed(String),
}

/// The order pgBackRest's readers need: data first, then each backup's manifest, then the info
/// files that name the backups and archives. A reader of the mirror never finds an info file
/// that points at something not there yet.
fn rank(key: &str) -> u8 {
    let name = key.rsplit('/').next().unwrap_or(key);
    if name.starts_with("backup.info") || name.starts_with("archive.info") {
        2
    } else if name.starts_with("backup.manifest") {
        1
    } else {
        0
    }
}

/// The copies that bring `mirror` up to `primary`. Objects pgBackRest writes once are copied when
/// missing; one whose size changed in the primary is `Changed`, never replaced. Its info files,
/// which it rewrites, are copied again when the primary's copy is newer. Nothing is deleted: an
/// object gone from the primary (expired, or deleted by whoever holds its keys) stays in the
/// mirror. Pure.
pub fn plan(primary: &BTreeMap<String, Listed>, mirror: &BTreeMap<String, Listed>) -> Vec<Op> {
    // pgBackRest saves `backup.manifest.copy` again and again while a backup runs and writes
    // `backup.manifest` once it is done: the copy is written once only from then on. So it is
    // not mirrored before the backup is done, and one mirrored mid-backup (the mirror holds no
    // `backup.manifest` beside it) is replaced.
    let finished = |map: &BTreeMap<String, Listed>, key: &str| {
        key.strip_suffix(".copy")
            .is_none_or(|manifest| map.contains_key(manifest))
    };
    let in_progress = |key: &str| key.ends_with("/backup.manifest.copy") && !finished(primary, key);
    let mirrored_mid_backup =
        |key: &str| key.ends_with("/backup.manifest.copy") && !finished(mirror, key);
    let mut ops: Vec<Op> = primary
        .iter()
        .filter(|(key, _)| !in_progress(key))
        .filter_map(|(key, p)| match mirror.get(key) {
            None => Some(Op::Copy(key.clone())),
            Some(m) if mirrored_mid_backup(key) && m.size != p.size => Some(Op::Copy(key.clone())),
            Some(m) if rank(key) == 2 && (m.size != p.size || p.modified > m.modified) => {
                Some(Op::Copy(key.clone()))
            }
            Some(m) if rank(key) < 2 && m.size != p.size => Some(Op::Changed(key.clone())),
            Some(_) => None,
        })
        .collect();
    ops.sort_by_key(|op| match op {
        Op::Copy(key) => (rank(key), key.clone()),
        Op::Changed(key) => (3, key.clone()),
    });
    ops
}

impl Bucket {
    fn path(&self, key: &str) -> Path {
        if self.prefix.as_ref().is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.prefix))
        }
    }

    async fn list(&self) -> Result<BTreeMap<String, Listed>, String> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let strip = prefix.map_or(0, |p| p.as_ref().len() + 1);
        self.store
            .list(prefix)
            .map_ok(|meta| {
                let key = meta.location.as_ref()[strip..].to_string();
                let listed = Listed {
                    size: meta.size,
                    modified: meta.last_modified.timestamp(),
                };
                (key, listed)
            })
            .try_collect()
            .await
            .map_err(|e| e.to_string())
    }
}

/// Objects up to this size are copied in one request; larger ones stream through in parts of
/// this size, at most two in flight, so a copy holds a few parts in memory whatever the
/// object's size (S3 wants parts of 5 MiB at least).
const PART: usize = 8 * 1024 * 1024;
const PARTS_IN_FLIGHT: usize = 2;

/// Copies one object and checks the copy against what the mirror says it stored. The size the
/// primary gives when the object is read (not when it was listed) decides how.
async fn copy(primary: &Bucket, mirror: &Bucket, key: &str) -> Result<u64, String> {
    let source = primary
        .store
        .get(&primary.path(key))
        .await
        .map_err(|e| format!("reading {key}: {e}"))?;
    if source.meta.size > PART as u64 {
        return copy_in_parts(source, mirror, key).await;
    }
    copy_whole(source, mirror, key).await
}

/// The ETag S3 gives an object uploaded in parts of `PART` bytes: the MD5 of the parts' MD5s,
/// then `-` and the number of parts.
#[derive(Default)]
struct PartsDigest {
    part: Md5,
    in_part: usize,
    digests: Vec<u8>,
    parts: usize,
}

impl PartsDigest {
    fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = bytes.len().min(PART - self.in_part);
            self.part.update(&bytes[..take]);
            self.in_part += take;
            bytes = &bytes[take..];
            if self.in_part == PART {
                self.close_part();
            }
        }
    }

    fn close_part(&mut self) {
        let part = std::mem::take(&mut self.part);
        self.digests.extend_from_slice(&part.finalize());
        self.parts += 1;
        self.in_part = 0;
    }

    fn finish(mut self) -> String {
        if self.in_part > 0 {
            self.close_part();
        }
        format!("{:x}-{}", Md5::digest(&self.digests), self.parts)
    }
}

/// Streams an object through in parts: read from the primary, written to the mirror, never
/// whole in memory. The mirror's ETag of the parts must be the one computed from the bytes read.
async fn copy_in_parts(source: GetResult, mirror: &Bucket, key: &str) -> Result<u64, String> {
    let reading = |e: object_store::Error| format!("reading {key}: {e}");
    let writing = |e: object_store::Error| format!("writing {key}: {e}");
    let mut source = source.into_stream();
    let upload = mirror
        .store
        .put_multipart(&mirror.path(key))
        .await
        .map_err(writing)?;
    let mut target = WriteMultipart::new_with_chunk_size(upload, PART);
    let mut digest = PartsDigest::default();
    let mut size = 0;
    while let Some(chunk) = source.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) => {
                let _ = target.abort().await;
                return Err(reading(error));
            }
        };
        target
            .wait_for_capacity(PARTS_IN_FLIGHT)
            .await
            .map_err(writing)?;
        digest.update(&chunk);
        size += chunk.len() as u64;
        target.put(chunk);
    }
    let stored = target.finish().await.map_err(writing)?;
    verify(key, stored.e_tag, &digest.finish())?;
    Ok(size)
}

fn verify(key: &str, etag: Option<String>, expected: &str) -> Result<(), String> {
    let etag = etag.unwrap_or_default();
    if etag.trim_matches('"') != expected {
        return Err(format!(
            "{key}: the mirror stored other bytes (ETag {etag}, expected {expected} from the source)"
        ));
    }
    Ok(())
}

/// Copies a small object in one request: the mirror's ETag of a single-part upload is the MD5
/// of the bytes it stored, which must be the MD5 of the bytes read from the primary.
async fn copy_whole(source: GetResult, mirror: &Bucket, key: &str) -> Result<u64, String> {
    let bytes = source
        .bytes()
        .await
        .map_err(|e| format!("reading {key}: {e}"))?;
    let expected = format!("{:x}", Md5::digest(&bytes));
    let size = bytes.len() as u64;
    let stored = mirror
        .store
        .put(&mirror.path(key), PutPayload::from_bytes(bytes))
        .await
        .map_err(|e| format!("writing {key}: {e}"))?;
    verify(key, stored.e_tag, &expected)?;
    Ok(size)
}

/// What a pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    pub copied: usize,
    pub bytes: u64,
    /// Objects that changed in the primary after they were mirrored (see `Op::Changed`).
    pub changed: Vec<String>,
}

/// One pass that brings `mirror` up to `primary`; data objects four at a time, manifests and
/// info files after them in order. An interrupted pass leaves a mirror the next pass completes.
pub async fn sync(primary: &Bucket, mirror: &Bucket) -> Result<Pass, String> {
    let (source, target) = tokio::try_join!(primary.list(), mirror.list())?;
    let mut pass = Pass::default();
    let mut data = Vec::new();
    let mut rest = Vec::new();
    for op in plan(&source, &target) {
        match op {
            Op::Copy(key) if rank(&key) == 0 => data.push(key),
            Op::Copy(key) => rest.push(key),
            Op::Changed(key) => pass.changed.push(key),
        }
    }
    let sizes: Vec<u64> = futures::stream::iter(data)
        .map(|key| async move { copy(primary, mirror, &key).await })
        .buffer_unordered(4)
        .try_collect()
        .await?;
    pass.copied += sizes.len();
    pass.bytes += sizes.iter().sum::<u64>();
    for key in rest {
        pass.bytes += copy(primary, mirror, &key).await?;
        pass.copied += 1;
    }
    Ok(pass)
}

/// Mirror passes running in tasks of their own, by policy UID and mirror name: a policy's
/// reconcile starts one and reads how it went on a later reconcile, instead of waiting for the
/// copy. A pass lost with the operator is simply run again (a pass copies what is missing).
#[derive(Default)]
pub struct Passes(std::sync::Mutex<std::collections::HashMap<String, Running>>);

struct Running {
    started: Time,
    task: tokio::task::JoinHandle<Result<u64, String>>,
}

/// Where the pass of one mirror stands.
pub enum Polled {
    /// None runs.
    Idle,
    Running,
    /// It ended: when it started, and how many objects it copied or why it failed.
    Done(Time, Result<u64, String>),
}

impl Passes {
    /// How the pass under `key` stands; a finished one is taken out.
    pub fn poll(&self, key: &str) -> Polled {
        let mut passes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match passes.get(key) {
            None => return Polled::Idle,
            Some(running) if !running.task.is_finished() => return Polled::Running,
            Some(_) => {}
        }
        let Some(mut done) = passes.remove(key) else {
            return Polled::Idle;
        };
        let result = match futures::FutureExt::now_or_never(&mut done.task) {
            Some(Ok(result)) => result,
            Some(Err(error)) => Err(format!("the mirror pass ended abnormally: {error}")),
            None => Err("the mirror pass was lost".into()),
        };
        Polled::Done(done.started, result)
    }

    /// Runs `pass` as the pass under `key`, started at `started`.
    pub fn start(
        &self,
        key: String,
        started: Time,
        pass: impl Future<Output = Result<u64, String>> + Send + 'static,
    ) {
        let task = tokio::spawn(pass);
        let mut passes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        passes.insert(key, Running { started, task });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pass_runs_in_its_own_task_and_its_result_is_read_once() {
        let passes = Passes::default();
        assert!(matches!(passes.poll("p/m"), Polled::Idle));
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let started = Time(jiff::Timestamp::from_second(1_000).unwrap());
        passes.start("p/m".into(), started.clone(), async move {
            wait.await.map_err(|e| e.to_string())?;
            Ok(3)
        });
        assert!(matches!(passes.poll("p/m"), Polled::Running));
        go.send(()).unwrap();
        for _ in 0..100 {
            match passes.poll("p/m") {
                Polled::Running => tokio::time::sleep(Duration::from_millis(10)).await,
                Polled::Done(at, result) => {
                    assert_eq!((at, result), (started, Ok(3)));
                    assert!(matches!(passes.poll("p/m"), Polled::Idle));
                    return;
                }
                Polled::Idle => panic!("the pass vanished"),
            }
        }
        panic!("the pass did not end");
    }

    fn listed(entries: &[(&str, u64, i64)]) -> BTreeMap<String, Listed> {
        entries
            .iter()
            .map(|(k, size, modified)| {
                (
                    k.to_string(),
                    Listed {
                        size: *size,
                        modified: *modified,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn the_parts_etag_is_computed_over_whole_parts_whatever_the_chunks() {
        let data: Vec<u8> = (0..PART * 5 / 2).map(|i| (i % 251) as u8).collect();
        let mut digest = PartsDigest::default();
        // Chunks that straddle the part boundaries, as a network stream delivers them.
        for chunk in data.chunks(1_000_003) {
            digest.update(chunk);
        }
        let mut digests = Vec::new();
        for part in data.chunks(PART) {
            digests.extend_from_slice(&Md5::digest(part));
        }
        let expected = format!("{:x}-3", Md5::digest(&digests));
        assert_eq!(digest.finish(), expected);
    }

    #[test]
    fn a_manifest_copy_is_mirrored_once_its_backup_is_done() {
        let running = listed(&[
            ("backup/s/L/pg_data/base/1.lz4", 100, 5),
            ("backup/s/L/backup.manifest.copy", 10, 5),
        ]);
        assert_eq!(
            plan(&running, &BTreeMap::new()),
            [Op::Copy("backup/s/L/pg_data/base/1.lz4".into())]
        );
        let done = listed(&[
            ("backup/s/L/pg_data/base/1.lz4", 100, 5),
            ("backup/s/L/backup.manifest", 12, 6),
            ("backup/s/L/backup.manifest.copy", 12, 6),
        ]);
        // A copy saved mid-backup (by an earlier pass) is replaced by the final one...
        let mid_backup = listed(&[
            ("backup/s/L/pg_data/base/1.lz4", 100, 5),
            ("backup/s/L/backup.manifest.copy", 10, 5),
        ]);
        assert_eq!(
            plan(&done, &mid_backup),
            [
                Op::Copy("backup/s/L/backup.manifest".into()),
                Op::Copy("backup/s/L/backup.manifest.copy".into())
            ]
        );
        // ...and once the mirror holds the finished backup, it is written once like the rest.
        let changed = listed(&[
            ("backup/s/L/pg_data/base/1.lz4", 100, 5),
            ("backup/s/L/backup.manifest", 12, 6),
            ("backup/s/L/backup.manifest.copy", 99, 7),
        ]);
        assert_eq!(
            plan(&changed, &done),
            [Op::Changed("backup/s/L/backup.manifest.copy".into())]
        );
    }

    #[test]
    fn data_comes_before_manifests_and_info_files_and_nothing_is_deleted() {
        let primary = listed(&[
            ("backup/s/backup.info", 10, 5),
            ("backup/s/L/backup.manifest", 10, 5),
            ("backup/s/L/pg_data/base/1.lz4", 100, 5),
            ("archive/s/15-1/0000/seg.lz4", 50, 5),
        ]);
        let mirror = listed(&[("backup/s/OLD/backup.manifest", 10, 1)]);
        assert_eq!(
            plan(&primary, &mirror),
            [
                Op::Copy("archive/s/15-1/0000/seg.lz4".into()),
                Op::Copy("backup/s/L/pg_data/base/1.lz4".into()),
                Op::Copy("backup/s/L/backup.manifest".into()),
                Op::Copy("backup/s/backup.info".into()),
            ]
        );
        assert!(
            plan(&BTreeMap::new(), &mirror).is_empty(),
            "a primary emptied by anyone deletes nothing"
        );
    }

    #[test]
    fn a_mirror_that_matches_needs_nothing_and_rewritten_info_files_are_copied_again() {
        let primary = listed(&[("a/seg", 5, 1), ("backup/s/backup.info", 10, 9)]);
        let same = listed(&[("a/seg", 5, 2), ("backup/s/backup.info", 10, 9)]);
        assert!(plan(&primary, &same).is_empty());
        let stale_info = listed(&[("a/seg", 5, 2), ("backup/s/backup.info", 10, 3)]);
        assert_eq!(
            plan(&primary, &stale_info),
            [Op::Copy("backup/s/backup.info".into())]
        );
    }

    #[test]
    fn an_object_changed_in_the_primary_is_reported_and_the_mirrored_copy_kept() {
        let primary = listed(&[("a/seg", 5, 9), ("backup/s/L/backup.manifest", 7, 9)]);
        let mirrored = listed(&[("a/seg", 3, 2), ("backup/s/L/backup.manifest", 10, 2)]);
        assert_eq!(
            plan(&primary, &mirrored),
            [
                Op::Changed("a/seg".into()),
                Op::Changed("backup/s/L/backup.manifest".into())
            ]
        );
    }
}
