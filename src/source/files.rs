//! Manifest files: multi-document YAML (or JSON) holding `LlmProvider`, `LlmProxy` and
//! `v1/Secret` objects, read from files and folders and watched for changes.
//!
//! Folders are read recursively in name order, skipping hidden entries (so a mounted
//! ConfigMap's `..data` indirection is read once, through its visible symlinks). Objects of
//! other kinds are ignored, so a folder of ordinary Kubernetes manifests can be pointed at.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::config::{Object, ObjectKey, SecretData};
use crate::crd::{GROUP, LlmProvider, LlmProxy, VERSION};

/// A manifest that could not be read or parsed.
#[derive(Clone, Debug, thiserror::Error)]
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

/// A document that could not be used.
#[derive(Debug)]
pub struct DocError {
    /// What is wrong (the path is left empty).
    pub error: LoadError,
    /// What keeps its last good version because of it.
    pub affects: Affects,
}

/// What an unusable document holds back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Affects {
    /// The object it describes (kind and key): that object keeps its last good version.
    Object(&'static str, ObjectKey),
    /// A document that cannot be attributed (a YAML syntax error, not an object, no name):
    /// every object of its file keeps its last good version.
    File,
    /// Nothing served (an unknown kind of our API group): only reported.
    Nothing,
}

/// Parse one multi-document YAML text (the path of each error is left empty).
pub fn parse(text: &str) -> Result<Vec<Object>, Vec<LoadError>> {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for doc in parse_documents(text) {
        match doc {
            Ok(object) => objects.push(object),
            Err(e) => errors.push(e.error),
        }
    }
    if errors.is_empty() {
        Ok(objects)
    } else {
        Err(errors)
    }
}

/// Parse one multi-document YAML text document by document: each of our objects, or why a
/// document cannot be used (and which object it was meant to be). Other kinds are skipped.
pub fn parse_documents(text: &str) -> Vec<Result<Object, Box<DocError>>> {
    let mut out = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc = Some(i + 1);
        let fail = |message: String, affects: Affects| {
            Err(Box::new(DocError {
                error: LoadError {
                    path: PathBuf::new(),
                    doc,
                    message,
                },
                affects,
            }))
        };
        let value = match serde_yaml::Value::deserialize(document) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                out.push(fail(format!("invalid YAML: {e}"), Affects::File));
                // The rest of the stream cannot be trusted after a syntax error.
                break;
            }
        };
        let meta: TypeMeta = match serde_yaml::from_value(value.clone()) {
            Ok(m) => m,
            Err(e) => {
                out.push(fail(format!("not a Kubernetes object: {e}"), Affects::File));
                continue;
            }
        };
        let field = |name: &str| {
            meta.metadata
                .as_ref()
                .and_then(|m| m.get(name))
                .and_then(|n| n.as_str())
                .filter(|n| !n.is_empty())
        };
        let named =
            field("name").map(|name| ObjectKey::new(field("namespace").unwrap_or("default"), name));
        let name = field("name").unwrap_or("<unnamed>").to_owned();
        let ours = meta.api_version.split('/').next() == Some(GROUP);
        let expected = format!("{GROUP}/{VERSION}");
        let label = format!("{} {name}", meta.kind);
        let kind: Option<&'static str> = match meta.kind.as_str() {
            "LlmProvider" => Some("LlmProvider"),
            "LlmProxy" => Some("LlmProxy"),
            "LlmBudget" => Some("LlmBudget"),
            "Secret" if meta.api_version == "v1" => Some("Secret"),
            _ => None,
        };
        let object = match (kind, named) {
            (Some(kind), Some(key)) => Affects::Object(kind, key),
            (Some(_), None) => {
                out.push(fail(
                    format!("{label}: metadata.name is required"),
                    Affects::File,
                ));
                continue;
            }
            (None, _) => Affects::Nothing,
        };
        match (meta.kind.as_str(), meta.api_version.as_str()) {
            ("LlmProvider" | "LlmProxy" | "LlmBudget", v) if v != expected => out.push(fail(
                format!("{label}: apiVersion `{v}` is not served; use `{expected}`"),
                object,
            )),
            // Unknown fields are problems that name the field (config::strict).
            ("LlmProvider", _) => match crate::config::strict::typed::<LlmProvider>(value) {
                Ok(p) => out.push(Ok(Object::Provider(std::sync::Arc::new(p)))),
                Err(e) => out.push(fail(format!("{label}: {e}"), object)),
            },
            ("LlmProxy", _) => match crate::config::strict::typed::<LlmProxy>(value) {
                Ok(p) => out.push(Ok(Object::Proxy(std::sync::Arc::new(p)))),
                Err(e) => out.push(fail(format!("{label}: {e}"), object)),
            },
            ("LlmBudget", _) => {
                match crate::config::strict::typed::<crate::crd::LlmBudget>(value) {
                    Ok(b) => out.push(Ok(Object::Budget(std::sync::Arc::new(b)))),
                    Err(e) => out.push(fail(format!("{label}: {e}"), object)),
                }
            }
            ("Secret", "v1") => match typed::<Secret>(value) {
                Ok(s) => out.push(Ok(Object::Secret(
                    ObjectKey::of(&s.metadata),
                    SecretData::from_secret(&s),
                ))),
                // Never echo the document: it may hold key material.
                Err(e) => out.push(fail(
                    format!("Secret {name}: invalid ({})", redact_serde_error(&e)),
                    object,
                )),
            },
            (kind, _) if ours => out.push(fail(
                format!(
                    "unknown kind `{kind}` in {GROUP}; expected LlmProvider, LlmProxy or LlmBudget"
                ),
                Affects::Nothing,
            )),
            _ => {}
        }
    }
    out
}

/// What [`Reader::read`] found.
#[derive(Debug, Default)]
pub struct Read {
    /// Every object to serve: each in its newest version when its document is usable, else
    /// in its last good version.
    pub objects: Vec<Object>,
    /// Every problem of the files (with path and document number).
    pub errors: Vec<LoadError>,
    /// Whether any file changed since the last read (or files came or went).
    pub changed: bool,
    /// Files read.
    pub files: usize,
}

/// One file as last read: its fingerprint, the objects it contributes and its problems.
struct FileState {
    hash: u64,
    objects: Vec<Object>,
    errors: Vec<LoadError>,
    /// The objects of each document, by the hash of its text (see [`split_documents`]), so an
    /// edit of one document of a large file parses that document only.
    docs: DocCache,
}

/// The objects of each document of a file, by the hash of its text.
type DocCache = HashMap<u64, Vec<Object>>;

/// Split a YAML stream before each `---` marker line. YAML forbids a document marker at the
/// start of a line inside content, so each piece is a stream of its own. `None` when the text
/// has directives (`%`) or document-end markers (`...`), which pieces cannot carry alone.
pub fn split_documents(text: &str) -> Option<Vec<&str>> {
    let marker = |line: &str, m: &str| {
        line.strip_prefix(m)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
    };
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if line.starts_with('%') || marker(line, "...") {
            return None;
        }
        if marker(line, "---") && at > start {
            pieces.push(&text[start..at]);
            start = at;
        }
        at += line.len();
    }
    if at > start {
        pieces.push(&text[start..at]);
    }
    Some(pieces)
}

/// Parse a file document by document, reusing the objects of documents whose text did not
/// change; `None` when some document has a problem (the caller parses the whole text then,
/// for exact error positions).
fn parse_cached(text: &str, old: Option<&DocCache>) -> Option<(Vec<Object>, DocCache)> {
    let mut objects = Vec::new();
    let mut docs = HashMap::new();
    for piece in split_documents(text)? {
        let mut hasher = DefaultHasher::new();
        piece.hash(&mut hasher);
        let hash = hasher.finish();
        let found = match old.and_then(|o| o.get(&hash)) {
            Some(found) => found.clone(),
            None => parse_documents(piece)
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
                .ok()?,
        };
        objects.extend(found.iter().cloned());
        docs.insert(hash, found);
    }
    Some((objects, docs))
}

/// Reads the manifest files object by object (contract §5a), remembering each file's last
/// good objects: a document that cannot be used keeps its object's last good version; a file
/// that cannot be read or parsed at all keeps all of its last good objects. Unchanged files
/// are not parsed again.
#[derive(Default)]
pub struct Reader {
    files: BTreeMap<PathBuf, FileState>,
    list_error: Option<String>,
}

impl Reader {
    /// Read every manifest under `paths`.
    pub fn read(&mut self, paths: &[PathBuf]) -> Read {
        let list = match manifest_files(paths) {
            Ok(list) => list,
            Err(e) => {
                // A path that cannot be listed: everything keeps serving as it was.
                let changed = self.list_error.as_deref() != Some(&e.message);
                self.list_error = Some(e.message.clone());
                return Read {
                    objects: self.objects(),
                    errors: vec![e],
                    changed,
                    files: self.files.len(),
                };
            }
        };
        let mut changed = self.list_error.take().is_some()
            || list.len() != self.files.len()
            || list.iter().any(|f| !self.files.contains_key(f));
        // Files as last read; an unchanged one moves over as it is.
        let mut old_files = std::mem::take(&mut self.files);
        let mut next = BTreeMap::new();
        for file in &list {
            let bytes = std::fs::read(file);
            let mut hasher = DefaultHasher::new();
            (file, bytes.as_ref().ok()).hash(&mut hasher);
            let hash = hasher.finish();
            if old_files.get(file).is_some_and(|o| o.hash == hash)
                && let Some(old) = old_files.remove(file)
            {
                next.insert(file.clone(), old);
                continue;
            }
            let old = old_files.get(file);
            changed = true;
            let last_good = || old.map(|o| o.objects.clone()).unwrap_or_default();
            let text = bytes
                .map_err(|e| e.to_string())
                .and_then(|b| String::from_utf8(b).map_err(|_| "is not UTF-8 text".to_owned()));
            let state = match text {
                Err(message) => FileState {
                    hash,
                    objects: last_good(),
                    errors: vec![LoadError {
                        path: file.clone(),
                        doc: None,
                        message,
                    }],
                    docs: HashMap::new(),
                },
                Ok(text) => 'parsed: {
                    if let Some((objects, docs)) = parse_cached(&text, old.map(|o| &o.docs)) {
                        break 'parsed FileState {
                            hash,
                            objects,
                            errors: Vec::new(),
                            docs,
                        };
                    }
                    let mut objects = Vec::new();
                    let mut errors = Vec::new();
                    let mut whole_file = false;
                    for doc in parse_documents(&text) {
                        match doc {
                            Ok(object) => objects.push(object),
                            Err(failed) => {
                                let DocError { mut error, affects } = *failed;
                                error.path = file.clone();
                                errors.push(error);
                                match affects {
                                    Affects::File => whole_file = true,
                                    Affects::Object(kind, key) => {
                                        // Its last good version, from whichever file held it.
                                        let good = next
                                            .values()
                                            .chain(old_files.values())
                                            .flat_map(|f: &FileState| f.objects.iter())
                                            .find(|o| o.describe() == (kind, key.clone()));
                                        if let Some(good) = good {
                                            objects.push(good.clone());
                                        }
                                    }
                                    Affects::Nothing => {}
                                }
                            }
                        }
                    }
                    if whole_file && old.is_some() {
                        objects = last_good();
                    }
                    FileState {
                        hash,
                        objects,
                        errors,
                        docs: HashMap::new(),
                    }
                }
            };
            next.insert(file.clone(), state);
        }
        self.files = next;
        Read {
            objects: self.objects(),
            errors: self
                .files
                .values()
                .flat_map(|f| f.errors.iter().cloned())
                .collect(),
            changed,
            files: self.files.len(),
        }
    }

    fn objects(&self) -> Vec<Object> {
        self.files
            .values()
            .flat_map(|f| f.objects.iter().cloned())
            .collect()
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

    fn provider_doc(name: &str, base: &str) -> String {
        format!(
            "apiVersion: portcullis.dev/v1alpha1\nkind: LlmProvider\nmetadata: {{name: {name}, namespace: ai}}\nspec: {{type: vllm, baseUrl: '{base}'}}\n"
        )
    }

    fn bases(read: &Read) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = read
            .objects
            .iter()
            .filter_map(|o| match o {
                Object::Provider(p) => Some((
                    p.metadata.name.clone().unwrap_or_default(),
                    p.spec.base_url.clone().unwrap_or_default(),
                )),
                _ => None,
            })
            .collect();
        out.sort();
        out
    }

    fn pair(name: &str, base: &str) -> (String, String) {
        (name.to_owned(), base.to_owned())
    }

    #[test]
    fn an_unusable_document_keeps_its_objects_last_good_version_and_others_move_on() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("a.yaml");
        let paths = [dir.path().to_owned()];
        let write = |text: String| std::fs::write(&file, text).unwrap_or_else(|e| panic!("{e}"));
        let mut reader = Reader::default();

        write(format!(
            "{}---\n{}",
            provider_doc("a", "http://a1"),
            provider_doc("b", "http://b1")
        ));
        let read = reader.read(&paths);
        assert!(read.errors.is_empty() && read.changed, "{:?}", read.errors);
        assert_eq!(
            bases(&read),
            [pair("a", "http://a1"), pair("b", "http://b1")]
        );

        // Unchanged: nothing to do.
        assert!(!reader.read(&paths).changed);

        // b's document breaks (an unknown type): b keeps its last good version, a moves on.
        write(format!(
            "{}---\n{}",
            provider_doc("a", "http://a2"),
            provider_doc("b", "http://b2").replace("type: vllm", "type: nosuch")
        ));
        let read = reader.read(&paths);
        assert_eq!(read.errors.len(), 1, "{:?}", read.errors);
        assert!(read.errors[0].to_string().contains("LlmProvider b"));
        assert_eq!(
            bases(&read),
            [pair("a", "http://a2"), pair("b", "http://b1")]
        );

        // A YAML syntax error: the whole file keeps its last good objects.
        write(format!(
            "{}---\nkind: [unclosed\n",
            provider_doc("a", "http://a3")
        ));
        let read = reader.read(&paths);
        assert!(read.errors[0].message.contains("invalid YAML"));
        assert_eq!(
            bases(&read),
            [pair("a", "http://a2"), pair("b", "http://b1")]
        );

        // Fixed: the newest versions; an object no longer in the files is gone.
        write(provider_doc("a", "http://a4"));
        let read = reader.read(&paths);
        assert!(read.errors.is_empty());
        assert_eq!(bases(&read), [pair("a", "http://a4")]);

        // A document that is new and broken is left out and reported.
        write(format!(
            "{}---\n{}",
            provider_doc("a", "http://a4"),
            provider_doc("c", "x").replace("type: vllm", "type: nosuch")
        ));
        let read = reader.read(&paths);
        assert_eq!(read.errors.len(), 1);
        assert_eq!(bases(&read), [pair("a", "http://a4")]);

        // A deleted file takes its objects with it.
        std::fs::remove_file(&file).unwrap_or_else(|e| panic!("{e}"));
        let read = reader.read(&paths);
        assert!(read.changed && read.objects.is_empty());
    }

    #[test]
    fn documents_split_at_markers_and_parse_the_same() {
        let text = format!(
            "---\n{}--- \n{}\n---\n# comment\n{}",
            provider_doc("a", "http://a"),
            provider_doc("b", "http://b"),
            provider_doc("c", "http://c")
        );
        let pieces = split_documents(&text).unwrap_or_default();
        assert_eq!(pieces.concat(), text);
        assert_eq!(pieces.len(), 3);
        let (objects, docs) = parse_cached(&text, None).unwrap_or_default();
        assert_eq!(objects.len(), 3);
        // A second parse with one document changed reuses the other two.
        let edited = text.replace("http://b", "http://b2");
        let (again, _) = parse_cached(&edited, Some(&docs)).unwrap_or_default();
        assert_eq!(again.len(), 3);
        assert_eq!(
            parse(&edited).map(|o| o.len()).unwrap_or_default(),
            again.len()
        );
        // Directives and end markers: no splitting (the whole text is parsed).
        assert!(split_documents("%YAML 1.2\n---\na: 1\n").is_none());
        assert!(split_documents("a: 1\n...\n").is_none());
        // Pieces with a problem: the caller parses the whole text for exact positions.
        assert!(parse_cached("kind: [unclosed\n", None).is_none());
    }
}
