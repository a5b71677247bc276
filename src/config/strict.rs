//! Reading our own kinds from manifests (file mode and `portcullis check`): a field the
//! gateway does not know is an error that names it, never silently ignored — a user who
//! writes `spec.retries` or misspells `spec.timout` must not believe it applies. (In
//! Kubernetes the CRDs are structural: the API server prunes unknown fields, and
//! `kubectl apply --validate=strict` refuses them.)

/// Deserialize a manifest document: the path of a failing field in the message
/// (`spec.type: unknown variant ...`), and every unknown field reported by its path.
pub fn typed<T: serde::de::DeserializeOwned>(value: serde_yaml::Value) -> Result<T, String> {
    let mut unknown = Vec::new();
    let mut note = |path: serde_ignored::Path<'_>| {
        let path = path.to_string();
        // The type meta is read (and checked) before the object itself.
        if unknown.len() < 20 && path != "apiVersion" && path != "kind" {
            unknown.push(path);
        }
    };
    let result: Result<T, _> =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(value, &mut note));
    let object = result.map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." {
            inner
        } else {
            format!("{path}: {inner}")
        }
    })?;
    match unknown.as_slice() {
        [] => Ok(object),
        [one] => Err(format!(
            "unknown field `{one}`: this version of the gateway does not know it and would ignore it; remove it or fix its spelling"
        )),
        many => Err(format!(
            "unknown fields {}: this version of the gateway does not know them and would ignore them; remove them or fix their spelling",
            many.iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::source::files::parse;

    fn errors(yaml: &str) -> Vec<String> {
        match parse(yaml) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn unknown_fields_are_named() {
        let proxy = "apiVersion: portcullis.dev/v1alpha1\nkind: LlmProxy\nmetadata: {name: x, namespace: ai}\nspec:\n  providers: [{providerRef: {name: p}, weight: 2}]\n  modles: [a]\n  retries: {attempts: 3}\n";
        let e = errors(proxy);
        assert_eq!(e.len(), 1, "{e:?}");
        for field in ["spec.providers.0.weight", "spec.modles", "spec.retries"] {
            assert!(e[0].contains(&format!("`{field}`")), "{e:?}");
        }
        assert!(e[0].contains("LlmProxy x"), "{e:?}");
        let provider = "apiVersion: portcullis.dev/v1alpha1\nkind: LlmProvider\nmetadata: {name: p, namespace: ai, labels: {a: b}}\nspec: {type: openai, timout: 5s}\n";
        let e = errors(provider);
        assert!(
            e.len() == 1 && e[0].contains("unknown field `spec.timout`"),
            "{e:?}"
        );
        let good = "apiVersion: portcullis.dev/v1alpha1\nkind: LlmProvider\nmetadata: {name: p, namespace: ai, labels: {a: b}, annotations: {c: d}}\nspec: {type: openai, timeout: 5s}\nstatus: {observedGeneration: 1}\n";
        assert!(errors(good).is_empty(), "{:?}", errors(good));
    }
}
