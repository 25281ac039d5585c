//! Writes an [`ImagePlan`] as an image archive: one uncompressed layer per `COPY`, as Docker
//! makes them, in a tar that is at once an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/…`) and a `docker save` archive (`manifest.json`). `ctr images import`,
//! `skopeo copy oci-archive:…` or `docker-archive:…`, `crane push` and `docker load` all read it.
//!
//! The output is reproducible: entries sorted as the Dockerfile names them, owned by root, with
//! the mtime and `created` of `SOURCE_DATE_EPOCH` (0 when unset), so the same binaries give the
//! same digests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::dockerfile::{Copy, ImagePlan};

/// PATH as BuildKit sets it on an image built FROM scratch.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the files of `COPY` come from.
#[derive(Debug)]
pub struct Sources {
    /// The build context (the repository root), for `COPY` without `--from`.
    pub context: PathBuf,
    /// `(stage, path prefix in that stage, local directory)`: `COPY --from=<stage>` of a path
    /// under the prefix reads the same relative path under the directory.
    pub stage_paths: Vec<(String, String, PathBuf)>,
}

impl Sources {
    fn resolve(&self, copy: &Copy, source: &str) -> anyhow::Result<PathBuf> {
        let Some(stage) = &copy.from else {
            return Ok(self.context.join(source));
        };
        self.stage_paths
            .iter()
            .filter(|(s, prefix, _)| {
                s == stage
                    && (source == prefix
                        || source.starts_with(&format!("{}/", prefix.trim_end_matches('/'))))
            })
            .max_by_key(|(_, prefix, _)| prefix.len())
            .map(|(_, prefix, dir)| dir.join(source[prefix.len()..].trim_start_matches('/')))
            .with_context(|| {
                format!(
                    "Dockerfile line {}: COPY --from={stage} {source}: no --stage-path says where \
                     stage {stage}'s {source} is on this machine",
                    copy.line
                )
            })
    }
}

/// A finished image: its blobs by digest, and the manifest's digest.
#[derive(Debug)]
pub struct Image {
    pub manifest_digest: String,
    pub config: Value,
    arch: String,
    /// Paths in the image (no leading `/`), in layer order.
    pub files: Vec<String>,
    blobs: Vec<(String, Vec<u8>)>,
    manifest: Vec<u8>,
    config_digest: String,
    layer_digests: Vec<String>,
}

/// Builds the image `plan` describes for `arch` (`amd64`, `arm64`).
pub fn build(plan: &ImagePlan, sources: &Sources, arch: &str) -> anyhow::Result<Image> {
    let arch = arch.to_owned();
    let epoch: u64 = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => value
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={value:?} is not a number of seconds"))?,
        Err(_) => 0,
    };
    let created = jiff::Timestamp::from_second(i64::try_from(epoch)?)?.to_string();
    let mut blobs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut history = Vec::new();
    let mut files = Vec::new();
    let mut layer_digests = Vec::new();
    for copy in &plan.copies {
        let layer = layer(copy, sources, epoch, &mut files)?;
        let digest = digest(&layer);
        diff_ids.push(digest.clone());
        layer_digests.push(digest.clone());
        history.push(json!({
            "created": created,
            "created_by": format!(
                "COPY {}{} {} # Dockerfile line {}",
                copy.from.as_ref().map(|s| format!("--from={s} ")).unwrap_or_default(),
                copy.sources.join(" "),
                copy.destination,
                copy.line
            ),
        }));
        blobs.push((digest, layer));
    }

    let mut env = vec![DEFAULT_PATH.to_owned()];
    env.extend(plan.env.iter().map(|(k, v)| format!("{k}={v}")));
    let mut config = serde_json::Map::new();
    config.insert("Env".into(), json!(env));
    if let Some(user) = &plan.user {
        config.insert("User".into(), json!(user));
    }
    if let Some(entrypoint) = &plan.entrypoint {
        config.insert("Entrypoint".into(), json!(entrypoint));
    }
    if let Some(cmd) = &plan.cmd {
        config.insert("Cmd".into(), json!(cmd));
    }
    if !plan.exposed_ports.is_empty() {
        let ports: BTreeMap<_, _> = plan.exposed_ports.iter().map(|p| (p, json!({}))).collect();
        config.insert("ExposedPorts".into(), json!(ports));
    }
    if !plan.labels.is_empty() {
        config.insert("Labels".into(), json!(plan.labels));
    }
    if let Some(dir) = &plan.working_dir {
        config.insert("WorkingDir".into(), json!(dir));
    }
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "created": created,
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": history,
    });
    let config_bytes = serde_json::to_vec(&config)?;
    let config_digest = digest(&config_bytes);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_bytes.len(),
        },
        "layers": blobs.iter().map(|(digest, layer)| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": digest,
            "size": layer.len(),
        })).collect::<Vec<_>>(),
        "annotations": plan.labels,
    });
    let manifest = serde_json::to_vec(&manifest)?;
    let manifest_digest = digest(&manifest);
    blobs.push((config_digest.clone(), config_bytes));
    Ok(Image {
        manifest_digest,
        config,
        arch,
        files,
        blobs,
        manifest,
        config_digest,
        layer_digests,
    })
}

impl Image {
    /// Writes the archive for image reference `reference` (`registry/repository:tag`) to `out`
    /// (through a temporary file, so a failed build never leaves a partial archive).
    pub fn write(&self, reference: &str, out: &Path) -> anyhow::Result<u64> {
        let tag = reference
            .rsplit_once(':')
            .filter(|(_, tag)| !tag.contains('/'))
            .map(|(_, tag)| tag)
            .with_context(|| format!("image reference {reference:?} has no :tag"))?;
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": self.manifest_digest,
                "size": self.manifest.len(),
                "platform": { "architecture": self.arch, "os": "linux" },
                "annotations": {
                    "io.containerd.image.name": reference,
                    "org.opencontainers.image.ref.name": tag,
                },
            }],
        });
        let blob_path = |digest: &str| format!("blobs/sha256/{}", &digest["sha256:".len()..]);
        let docker_manifest = json!([{
            "Config": blob_path(&self.config_digest),
            "RepoTags": [reference],
            "Layers": self.layer_digests.iter().map(|d| blob_path(d)).collect::<Vec<_>>(),
        }]);

        let dir = out.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        let temp = tempfile::NamedTempFile::new_in(dir)?;
        let mut archive = tar::Builder::new(std::io::BufWriter::new(temp.as_file()));
        let mut add = |path: &str, data: &[u8], mode: u32| -> anyhow::Result<()> {
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(if path.ends_with('/') {
                tar::EntryType::Directory
            } else {
                tar::EntryType::Regular
            });
            header.set_mode(mode);
            header.set_size(data.len() as u64);
            header.set_mtime(0);
            archive.append_data(&mut header, path, data)?;
            Ok(())
        };
        add("blobs/", &[], 0o755)?;
        add("blobs/sha256/", &[], 0o755)?;
        for (digest, blob) in &self.blobs {
            add(&blob_path(digest), blob, 0o644)?;
        }
        add(&blob_path(&self.manifest_digest), &self.manifest, 0o644)?;
        add("index.json", &serde_json::to_vec(&index)?, 0o644)?;
        add(
            "manifest.json",
            &serde_json::to_vec(&docker_manifest)?,
            0o644,
        )?;
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644)?;
        archive
            .into_inner()?
            .into_inner()
            .map_err(std::io::IntoInnerError::into_error)?
            .sync_all()?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            temp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))?;
        }
        temp.persist(out)
            .with_context(|| format!("failed to write {}", out.display()))?;
        Ok(std::fs::metadata(out)?.len())
    }
}

/// The layer of one `COPY`: its destination's parent directories, then each file.
fn layer(
    copy: &Copy,
    sources: &Sources,
    epoch: u64,
    files: &mut Vec<String>,
) -> anyhow::Result<Vec<u8>> {
    let into_directory = copy.destination.ends_with('/') || copy.sources.len() > 1;
    let mut entries: Vec<(String, PathBuf)> = Vec::new();
    for source in &copy.sources {
        let local = sources.resolve(copy, source)?;
        let metadata = std::fs::metadata(&local).with_context(|| {
            format!(
                "Dockerfile line {}: COPY {source}: cannot read {}",
                copy.line,
                local.display()
            )
        })?;
        if !metadata.is_file() {
            bail!(
                "Dockerfile line {}: COPY {source}: {} is not a regular file (`make images` \
                 copies files only)",
                copy.line,
                local.display()
            );
        }
        let name = Path::new(source)
            .file_name()
            .context("source without a file name")?
            .to_string_lossy();
        let destination = if into_directory {
            format!("{}/{name}", copy.destination.trim_end_matches('/'))
        } else {
            copy.destination.clone()
        };
        let destination = destination.trim_start_matches('/').to_owned();
        if destination.is_empty() || destination.split('/').any(|c| c == "..") {
            bail!(
                "Dockerfile line {}: COPY destination {:?} is not a path in the image",
                copy.line,
                copy.destination
            );
        }
        entries.push((destination, local));
    }

    let mut archive = tar::Builder::new(Vec::new());
    let mut directories = std::collections::BTreeSet::new();
    for (destination, local) in &entries {
        let mut parent = String::new();
        for component in destination
            .split('/')
            .rev()
            .skip(1)
            .collect::<Vec<_>>()
            .iter()
            .rev()
        {
            parent.push_str(component);
            parent.push('/');
            if directories.insert(parent.clone()) {
                let mut header = tar::Header::new_ustar();
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_uid(0);
                header.set_gid(0);
                header.set_mtime(epoch);
                header.set_size(0);
                archive.append_data(&mut header, &parent, std::io::empty())?;
            }
        }
        let data =
            std::fs::read(local).with_context(|| format!("failed to read {}", local.display()))?;
        let mode = {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::metadata(local)?.permissions().mode() & 0o7777
        };
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(epoch);
        header.set_size(data.len() as u64);
        archive.append_data(&mut header, destination, data.as_slice())?;
        files.push(destination.clone());
    }
    Ok(archive.into_inner()?)
}

fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut out = String::from("sha256:");
    for byte in hash.iter() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}
