//! The identity and version of a watched object, the one thing every record carries.

use kube::ResourceExt;

/// Identity and version of a watched object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Namespace (the namespace's own name for a Namespace).
    pub namespace: String,
    /// Object name.
    pub name: String,
    /// uid.
    pub uid: String,
    /// resourceVersion.
    pub resource_version: String,
}

/// The identity of any object.
pub fn meta_of<K: ResourceExt>(obj: &K) -> Meta {
    Meta {
        namespace: obj.namespace().unwrap_or_else(|| obj.name_any()),
        name: obj.name_any(),
        uid: obj.uid().unwrap_or_default(),
        resource_version: obj.resource_version().unwrap_or_default(),
    }
}
