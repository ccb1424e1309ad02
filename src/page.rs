//! The web chat page: its files (the page, its script and style, the client
//! library it runs on, its icon) embedded in the binary and served with
//! their types, a strict Content-Security-Policy and validators for caching.
//!
//! The files are revalidated on each load (`no-cache` with an ETag), so a new
//! parlor is picked up at once while an unchanged page costs a 304.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::OnceLock;

/// One embedded file.
pub struct Asset {
    pub body: &'static str,
    pub content_type: &'static str,
    pub etag: &'static str,
}

/// What the page may load: its own script and style, and a WebSocket back to
/// the instance that served it; nothing inline, nothing from elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const FILES: [(&str, &str, &str); 5] = [
    (
        "/",
        include_str!("../web/index.html"),
        "text/html; charset=utf-8",
    ),
    (
        "/app.js",
        include_str!("../web/app.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "/app.css",
        include_str!("../web/app.css"),
        "text/css; charset=utf-8",
    ),
    (
        "/parlor.js",
        include_str!("../clients/js/parlor.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "/favicon.svg",
        include_str!("../web/favicon.svg"),
        "image/svg+xml",
    ),
];

/// The file served at `path`, if the page has one there.
pub fn asset(path: &str) -> Option<&'static Asset> {
    static ASSETS: OnceLock<Vec<(&'static str, Asset)>> = OnceLock::new();
    let assets = ASSETS.get_or_init(|| {
        FILES
            .iter()
            .map(|(path, body, content_type)| {
                let mut hasher = DefaultHasher::new();
                body.hash(&mut hasher);
                let etag: &'static str =
                    Box::leak(format!("\"{:016x}\"", hasher.finish()).into_boxed_str());
                (
                    *path,
                    Asset {
                        body,
                        content_type,
                        etag,
                    },
                )
            })
            .collect()
    });
    assets
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, asset)| asset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_has_a_type_and_a_quoted_etag() {
        for path in ["/", "/app.js", "/app.css", "/parlor.js", "/favicon.svg"] {
            let asset = asset(path).unwrap();
            assert!(!asset.body.is_empty());
            assert!(asset.etag.starts_with('"') && asset.etag.ends_with('"'));
        }
        assert!(asset("/secret").is_none());
        assert_ne!(asset("/").unwrap().etag, asset("/app.js").unwrap().etag);
    }
}
