//! Manifest files: multi-document YAML (or JSON) holding `LlmProvider`, `LlmProxy` and
//! `v1/Secret` objects, read from files and folders and watched for changes.
//!
//! Folders are read recursively in name order, skipping hidden entries (so a mounted
//! ConfigMap's `..data` indirection is read once, through its visible symlinks). Objects of
//! other kinds are ignored, so a folder of ordinary Kubernetes manifests can be pointed at.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::config::{Object, ObjectKey, SecretData};
use crate::crd::{GROUP, LlmProvider, LlmProxy, VERSION};

/// A manifest that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
#[error("{path}{}: {message}", doc.map(|d| format!(" (document {d})")).unwrap_or_default())]
pub struct LoadError {
    /// The file (or folder).
    pub path: PathBuf,
    /// 1-based document number within the file, when the problem is in one document.
    pub doc: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// What a load read: the objects, and a fingerprint of the bytes (to skip no-op reloads).
#[derive(Debug)]
pub struct Loaded {
    /// Every object found, in file order.
    pub objects: Vec<Object>,
    /// Hash of every file's path and content.
    pub fingerprint: u64,
    /// Files read.
    pub files: Vec<PathBuf>,
}

/// The manifest files under these paths, in a stable order.
pub fn manifest_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let mut files = Vec::new();
    for path in paths {
        collect(path, true, &mut files)?;
    }
    Ok(files)
}

fn collect(path: &Path, explicit: bool, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let err = |e: std::io::Error| LoadError {
        path: path.to_owned(),
        doc: None,
        message: e.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(err)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !n.starts_with('.'))
            })
            .collect();
        entries.sort();
        for entry in entries {
            collect(&entry, false, out)?;
        }
    } else if explicit
        || path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
    {
        out.push(path.to_owned());
    }
    Ok(())
}

/// Read and parse every manifest under these paths. Any error fails the whole load: a
/// half-read configuration never replaces a working one.
pub fn load(paths: &[PathBuf]) -> Result<Loaded, Vec<LoadError>> {
    let files = manifest_files(paths).map_err(|e| vec![e])?;
    let mut hasher = DefaultHasher::new();
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(text) => {
                (file, Some(text.as_bytes())).hash(&mut hasher);
                match parse(&text) {
                    Ok(mut found) => objects.append(&mut found),
                    Err(mut e) => {
                        for err in &mut e {
                            err.path = file.clone();
                        }
                        errors.append(&mut e);
                    }
                }
            }
            Err(e) => errors.push(LoadError {
                path: file.clone(),
                doc: None,
                message: e.to_string(),
            }),
        }
    }
    if errors.is_empty() {
        Ok(Loaded {
            objects,
            fingerprint: hasher.finish(),
            files,
        })
    } else {
        Err(errors)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: Option<serde_yaml::Value>,
}

/// Parse one multi-document YAML text (the path of each error is left empty).
pub fn parse(text: &str) -> Result<Vec<Object>, Vec<LoadError>> {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc = Some(i + 1);
        let fail = |message: String| LoadError {
            path: PathBuf::new(),
            doc,
            message,
        };
        let value = match serde_yaml::Value::deserialize(document) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                errors.push(fail(format!("invalid YAML: {e}")));
                // The rest of the stream cannot be trusted after a syntax error.
                break;
            }
        };
        let meta: TypeMeta = match serde_yaml::from_value(value.clone()) {
            Ok(m) => m,
            Err(e) => {
                errors.push(fail(format!("not a Kubernetes object: {e}")));
                continue;
            }
        };
        let name = meta
            .metadata
            .as_ref()
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or("<unnamed>")
            .to_owned();
        let ours = meta.api_version.split('/').next() == Some(GROUP);
        let expected = format!("{GROUP}/{VERSION}");
        let label = format!("{} {name}", meta.kind);
        match (meta.kind.as_str(), meta.api_version.as_str()) {
            ("LlmProvider" | "LlmProxy" | "LlmBudget", v) if v != expected => errors.push(fail(
                format!("{label}: apiVersion `{v}` is not served; use `{expected}`"),
            )),
            ("LlmProvider", _) => match crate::config::strict::typed::<LlmProvider>(value) {
                Ok(p) if p.metadata.name.as_deref().is_some_and(|n| !n.is_empty()) => {
                    objects.push(Object::Provider(Box::new(p)))
                }
                Ok(_) => errors.push(fail(format!("{label}: metadata.name is required"))),
                Err(e) => errors.push(fail(format!("{label}: {e}"))),
            },
            ("LlmProxy", _) => match crate::config::strict::typed::<LlmProxy>(value) {
                Ok(p) if p.metadata.name.as_deref().is_some_and(|n| !n.is_empty()) => {
                    objects.push(Object::Proxy(Box::new(p)))
                }
                Ok(_) => errors.push(fail(format!("{label}: metadata.name is required"))),
                Err(e) => errors.push(fail(format!("{label}: {e}"))),
            },
            ("LlmBudget", _) => {
                match crate::config::strict::typed::<crate::crd::LlmBudget>(value) {
                    Ok(b) if b.metadata.name.as_deref().is_some_and(|n| !n.is_empty()) => {
                        objects.push(Object::Budget(Box::new(b)))
                    }
                    Ok(_) => errors.push(fail(format!("{label}: metadata.name is required"))),
                    Err(e) => errors.push(fail(format!("{label}: {e}"))),
                }
            }
            ("Secret", "v1") => match typed::<Secret>(value) {
                Ok(s) if s.metadata.name.as_deref().is_some_and(|n| !n.is_empty()) => objects.push(
                    Object::Secret(ObjectKey::of(&s.metadata), SecretData::from_secret(&s)),
                ),
                Ok(_) => errors.push(fail(format!("{label}: metadata.name is required"))),
                // Never echo the document: it may hold key material.
                Err(e) => errors.push(fail(format!(
                    "Secret {name}: invalid ({})",
                    redact_serde_error(&e)
                ))),
            },
            (kind, _) if ours => errors.push(fail(format!(
                "unknown kind `{kind}` in {GROUP}; expected LlmProvider, LlmProxy or LlmBudget"
            ))),
            _ => {}
        }
    }
    if errors.is_empty() {
        Ok(objects)
    } else {
        Err(errors)
    }
}

/// Deserialize with the path of the failing field in the message (`spec.type: unknown ...`).
fn typed<T: serde::de::DeserializeOwned>(value: serde_yaml::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." {
            inner
        } else {
            format!("{path}: {inner}")
        }
    })
}

/// serde error messages can quote the offending value; for Secrets keep only the location.
fn redact_serde_error(message: &str) -> String {
    let location = message
        .split_once(':')
        .map(|(field, _)| field)
        .unwrap_or("document");
    format!("{location}: malformed data or stringData (values must be strings; data base64)")
}

/// A fingerprint of the files under the paths (path and content), without parsing them.
pub fn fingerprint(paths: &[PathBuf]) -> u64 {
    let mut hasher = DefaultHasher::new();
    for file in manifest_files(paths).unwrap_or_default() {
        (&file, std::fs::read(&file).ok()).hash(&mut hasher);
    }
    hasher.finish()
}

/// Watch the paths; send on `tx` whenever something under them may have changed. Changes
/// are also caught by a periodic re-read (`poll`), for filesystems without inotify events.
pub fn watch(
    paths: &[PathBuf],
    tx: mpsc::Sender<()>,
    poll: Duration,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let notify_tx = tx.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = notify_tx.try_send(());
        }
    })?;
    for path in paths {
        // Watch a file's folder: editors and ConfigMap updates replace files by rename.
        let target = if path.is_dir() {
            path.clone()
        } else {
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_owned)
                .unwrap_or_else(|| PathBuf::from("."))
        };
        watcher.watch(&target, RecursiveMode::Recursive)?;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if tx.send(()).await.is_err() {
                return;
            }
        }
    });
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_kinds_and_ignores_others() {
        let text = r#"
apiVersion: v1
kind: Secret
metadata: {name: k, namespace: ai}
data: {apiKey: c2stMQ==}
stringData: {other: two}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
---
apiVersion: portcullis.dev/v1alpha1
kind: LlmProvider
metadata: {name: openai, namespace: ai}
spec: {type: openai, auth: {apiKey: {secretRef: {name: k}}}}
---
apiVersion: portcullis.dev/v1alpha1
kind: LlmProxy
metadata: {name: team-a}
spec: {providers: [{providerRef: {name: openai}}]}
"#;
        let objects = parse(text).unwrap_or_default();
        assert_eq!(objects.len(), 3);
        match &objects[0] {
            Object::Secret(key, data) => {
                assert_eq!(key, &ObjectKey::new("ai", "k"));
                assert_eq!(data.0["apiKey"], b"sk-1");
                assert_eq!(data.0["other"], b"two");
            }
            other => panic!("{other:?}"),
        }
        let (kind, key) = objects[2].describe();
        assert_eq!(
            (kind, key),
            ("LlmProxy", ObjectKey::new("default", "team-a"))
        );
    }

    #[test]
    fn unknown_type_is_an_error_naming_the_resource_and_field() {
        let text = "apiVersion: portcullis.dev/v1alpha1\nkind: LlmProvider\nmetadata: {name: x}\nspec: {type: nosuch}\n";
        let errors = parse(text).err().unwrap_or_default();
        assert_eq!(errors.len(), 1);
        let msg = errors[0].to_string();
        assert!(msg.contains("LlmProvider x"), "{msg}");
        assert!(msg.contains("spec.type"), "{msg}");
        assert!(msg.contains("unknown variant `nosuch`"), "{msg}");
    }

    #[test]
    fn secret_errors_do_not_echo_values() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {apiKey: [sk-LEAK]}\n";
        let errors = parse(text).err().unwrap_or_default();
        assert_eq!(errors.len(), 1);
        assert!(!errors[0].to_string().contains("sk-LEAK"));
    }

    #[test]
    fn wrong_version_and_bad_yaml() {
        let errors = parse("apiVersion: portcullis.dev/v1\nkind: LlmProxy\nmetadata: {name: x}\n")
            .err()
            .unwrap_or_default();
        assert!(errors[0].message.contains("portcullis.dev/v1alpha1"));
        let errors = parse("kind: [unclosed\n").err().unwrap_or_default();
        assert!(errors[0].message.contains("invalid YAML"));
    }
}
