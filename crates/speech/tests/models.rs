//! The model cache: download idempotence, the missing-file message, and a
//! clear error when the package index cannot be reached.

mod common;

use std::time::SystemTime;

use speech::{ModelCache, ModelFile};

#[test]
fn missing_file_error_names_the_download_command() {
    let dir = e2e_tests::scratch("missing");
    let cache = ModelCache::new(dir.clone());
    for f in ModelFile::ALL {
        let err = cache.file(f).expect_err("empty cache has no files");
        let msg = err.to_string();
        assert!(msg.contains("voice-agent download-files"), "{msg}");
        assert!(msg.contains(&dir.display().to_string()), "{msg}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Every file is present after `download`, and a second run neither calls
/// pip nor rewrites a file.
#[test]
fn download_is_idempotent() {
    let cache = common::cache();
    let mut first = Vec::new();
    cache
        .download(&[], &mut |l| first.push(l.to_string()))
        .unwrap_or_else(|e| panic!("download failed: {e}\n{}", first.join("\n")));
    let mtimes: Vec<SystemTime> = ModelFile::ALL
        .iter()
        .map(|&f| {
            let p = cache.file(f).expect("present after download");
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .expect("mtime")
        })
        .collect();

    let mut second = Vec::new();
    cache
        .download(&[], &mut |l| second.push(l.to_string()))
        .expect("second download");
    assert!(
        second
            .iter()
            .all(|l| !l.contains("downloading") && !l.contains("pip:")),
        "second run fetched again: {second:#?}"
    );
    assert!(
        second.iter().any(|l| l.contains("all 8 model files")),
        "{second:#?}"
    );
    for (&f, before) in ModelFile::ALL.iter().zip(mtimes) {
        let p = cache.file(f).expect("still present");
        let after = std::fs::metadata(p)
            .and_then(|m| m.modified())
            .expect("mtime");
        assert_eq!(before, after, "{f:?} was rewritten");
    }
}

/// An unreachable index gives an error that says so (no hang, no panic),
/// and leaves nothing half-written in the cache.
#[test]
fn unreachable_index_fails_clearly() {
    let dir = e2e_tests::scratch("offline");
    let cache = ModelCache::new(dir.clone()).with_index_url("http://127.0.0.1:9/simple");
    let mut lines = Vec::new();
    let err = cache
        .download(&[ModelFile::SileroVad], &mut |l| lines.push(l.to_string()))
        .expect_err("no index, no download");
    let msg = err.to_string();
    assert!(msg.contains("silero-vad"), "{msg}");
    assert!(
        msg.contains("unreachable") || msg.contains("offline"),
        "{msg}"
    );
    assert!(cache.file(ModelFile::SileroVad).is_err());
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    let _ = std::fs::remove_dir_all(dir);
}
