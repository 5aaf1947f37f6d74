//! Bundles for the tests: the example skill packed at a version, forged archives, and every way
//! a bundle can be bad, with the words its refusal must contain.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use ed25519_dalek::Signer;
use sha2::{Digest, Sha256};

/// The committed example skill.
pub fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("skills/example-arm6")
}

/// A copy of the example skill at `version`, in `dir`.
pub fn version(dir: &Path, v: &str) -> PathBuf {
    let out = dir.join(format!("arm6-{v}"));
    super::copy_tree(&example(), &out);
    let toml = out.join("skill.toml");
    let text = std::fs::read_to_string(&toml).unwrap().replace("version = \"0.1.0\"", &format!("version = \"{v}\""));
    std::fs::write(&toml, text).unwrap();
    out
}

/// A fleet key pair in `dir`: the secret and the public key files.
pub fn keys(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let stem = dir.join(name);
    super::succeeds(&["keys", "new", stem.to_str().unwrap()]);
    (stem.with_extension("key"), stem.with_extension("pub"))
}

/// The skill folder `src` packed into `out` with `key` and `extra` pack options.
pub fn pack_dir(src: &Path, key: &Path, out: &Path, extra: &[&str]) -> PathBuf {
    let mut args =
        vec!["bundle", "pack", src.to_str().unwrap(), "--key", key.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend(extra);
    super::succeeds(&args);
    out.to_path_buf()
}

/// The example skill at version `v`, packed into `dir/arm6-V[-down].skill` with `key`.
pub fn pack(dir: &Path, key: &Path, v: &str, extra: &[&str]) -> PathBuf {
    let src = version(dir, v);
    let out = dir.join(format!("arm6-{v}{}.skill", if extra.is_empty() { "" } else { "-down" }));
    pack_dir(&src, key, &out, extra);
    std::fs::remove_dir_all(&src).unwrap();
    out
}

/// Writes a bundle by hand: `entries` are (path, kind, bytes), with `contents` as bundle.json
/// and `sig` as bundle.sig.
pub fn forge(out: &Path, contents: &[u8], sig: Option<&[u8]>, entries: &[(&str, tar::EntryType, &[u8])]) {
    let file = std::fs::File::create(out).unwrap();
    let mut b = tar::Builder::new(zstd::Encoder::new(file, 3).unwrap());
    let mut add = |name: &str, kind: tar::EntryType, bytes: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(if kind == tar::EntryType::Regular { bytes.len() as u64 } else { 0 });
        h.set_mode(0o644);
        if kind == tar::EntryType::Symlink {
            h.set_link_name("/etc/passwd").unwrap();
        }
        // Written raw so that paths the tar crate would refuse (`..`, absolute) get through.
        let name_field = &mut h.as_old_mut().name;
        name_field.fill(0);
        name_field[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        let data: &[u8] = if kind == tar::EntryType::Regular { bytes } else { &[] };
        b.append(&h, data).unwrap();
    };
    add("bundle.json", tar::EntryType::Regular, contents);
    if let Some(sig) = sig {
        add("bundle.sig", tar::EntryType::Regular, sig);
    }
    for (name, kind, bytes) in entries {
        add(name, *kind, bytes);
    }
    b.into_inner().unwrap().finish().unwrap().flush().unwrap();
}

/// `bundle.json` and `bundle.sig` for `files` (path, bytes as listed: the archive may differ),
/// signed with the secret `key`.
pub fn signed_parts(key: &Path, name: &str, v: &str, files: &[(&str, u64, &[u8])]) -> (Vec<u8>, Vec<u8>) {
    let secret = skillgraft::skill::bundle::read_secret(key).unwrap();
    let list: Vec<serde_json::Value> = files
        .iter()
        .map(|(p, size, b)| serde_json::json!({"path": p, "sha256": hex::encode(Sha256::digest(b)), "size": size}))
        .collect();
    let contents = serde_json::to_vec(&serde_json::json!({
        "format": 1, "name": name, "version": v, "digest": format!("sha256:{}", "0".repeat(64)),
        "downgrade": false, "files": list,
    }))
    .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let sig = serde_json::to_vec(&serde_json::json!({
        "key": skillgraft::skill::bundle::key_id(&secret.verifying_key()),
        "signature": b64.encode(secret.sign(&contents).to_bytes()),
    }))
    .unwrap();
    (contents, sig)
}

/// One raw tar entry: name, type, the size its header declares, and the data actually written
/// (which may be shorter: a hostile header lies).
pub struct Raw<'a> {
    pub name: &'a str,
    pub kind: tar::EntryType,
    pub declared: u64,
    pub data: &'a [u8],
}

/// Writes raw entries as a zstd-compressed tar, exactly as given.
pub fn raw(out: &Path, entries: &[Raw]) {
    let file = std::fs::File::create(out).unwrap();
    let mut b = tar::Builder::new(zstd::Encoder::new(file, 3).unwrap());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(e.kind);
        h.set_size(e.declared);
        h.set_mode(0o644);
        let name_field = &mut h.as_old_mut().name;
        name_field.fill(0);
        let n = e.name.len().min(100);
        name_field[..n].copy_from_slice(&e.name.as_bytes()[..n]);
        h.set_cksum();
        b.append(&h, e.data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap().flush().unwrap();
}

/// A correctly signed bundle of arbitrary skill files (which need not make a skill that loads):
/// what a trusted but careless fleet could send.
pub fn signed(out: &Path, key: &Path, name: &str, v: &str, files: &[(&str, &[u8])]) {
    let secret = skillgraft::skill::bundle::read_secret(key).unwrap();
    let list: Vec<serde_json::Value> = files
        .iter()
        .map(|(p, b)| serde_json::json!({"path": p, "sha256": hex::encode(Sha256::digest(b)), "size": b.len()}))
        .collect();
    let contents = serde_json::to_vec(&serde_json::json!({
        "format": 1, "name": name, "version": v, "digest": format!("sha256:{}", "0".repeat(64)),
        "downgrade": false, "files": list,
    }))
    .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let sig = serde_json::to_vec(&serde_json::json!({
        "key": skillgraft::skill::bundle::key_id(&secret.verifying_key()),
        "signature": b64.encode(secret.sign(&contents).to_bytes()),
    }))
    .unwrap();
    let entries: Vec<(String, &[u8])> = files.iter().map(|(p, b)| (format!("skill/{p}"), *b)).collect();
    let entries: Vec<(&str, tar::EntryType, &[u8])> =
        entries.iter().map(|(p, b)| (p.as_str(), tar::EntryType::Regular, *b)).collect();
    forge(out, &contents, Some(&sig), &entries);
}

/// A real bundle's entries, to tamper with.
pub fn entries(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut a = tar::Archive::new(zstd::Decoder::new(std::fs::File::open(path).unwrap()).unwrap());
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
            (name, bytes)
        })
        .collect()
}

/// Bad bundles of the example skill: (name, file, words its refusal contains). `good` is the
/// example packed with the fleet's secret `key`; `dir` receives the files.
pub fn bad(dir: &Path, good: &Path, key: &Path) -> Vec<(&'static str, PathBuf, &'static str)> {
    let real = entries(good);
    let get = |name: &str| real.iter().find(|(n, _)| n == name).unwrap().1.clone();
    let (json, sig, manifest, onnx) =
        (get("bundle.json"), get("bundle.sig"), get("skill/skill.toml"), get("skill/policy.onnx"));
    let mut altered = onnx.clone();
    let last = altered.len() - 1;
    altered[last] ^= 1;
    let stranger_dir = dir.join("stranger");
    std::fs::create_dir_all(&stranger_dir).unwrap();
    let (stranger_key, _) = keys(&stranger_dir, "stranger");
    let src = version(&stranger_dir, "0.1.0");
    let r = tar::EntryType::Regular;
    let wide = String::from_utf8(manifest.clone()).unwrap().replace(
        "fields = [\"x\", \"y\", \"z\"]\nmean = [0.4, 0.0, 0.3]\nstd = [0.2, 0.2, 0.2]",
        "fields = [\"x\", \"y\"]\nmean = [0.4, 0.0]\nstd = [0.2, 0.2]",
    );
    assert_ne!(wide.as_bytes(), &manifest[..], "the manifest edit applies");
    let mut out = Vec::new();
    let mut case = |name: &'static str, want: &'static str, make: &dyn Fn(&Path)| {
        let path = dir.join(format!("{}.skill", name.replace(' ', "-")));
        make(&path);
        out.push((name, path, want));
    };
    case("tampered", "does not match its digest", &|p| {
        forge(p, &json, Some(&sig), &[("skill/skill.toml", r, &manifest), ("skill/policy.onnx", r, &altered)])
    });
    case("unsigned", "not signed", &|p| {
        forge(p, &json, None, &[("skill/skill.toml", r, &manifest), ("skill/policy.onnx", r, &onnx)])
    });
    case("traversal", "climbs out", &|p| {
        forge(p, &json, Some(&sig), &[("skill/../../escape", r, b"x"), ("skill/policy.onnx", r, &onnx)])
    });
    case("absolute", "absolute path", &|p| forge(p, &json, Some(&sig), &[("/tmp/skillgraft-absolute", r, b"x")]));
    case("symlink", "not a regular file", &|p| {
        forge(p, &json, Some(&sig), &[("skill/link", tar::EntryType::Symlink, b"")])
    });
    case("device", "not a regular file", &|p| forge(p, &json, Some(&sig), &[("skill/dev", tar::EntryType::Char, b"")]));
    case("extra file", "not in the signed list", &|p| {
        forge(
            p,
            &json,
            Some(&sig),
            &[("skill/skill.toml", r, &manifest), ("skill/policy.onnx", r, &onnx), ("skill/x.sh", r, b"rm -rf /")],
        )
    });
    case("truncated", "damaged or truncated", &|p| {
        let bytes = std::fs::read(good).unwrap();
        std::fs::write(p, &bytes[..bytes.len() / 2]).unwrap();
    });
    case("garbage", "not a skillgraft bundle", &|p| std::fs::write(p, b"not an archive at all").unwrap());
    case("untrusted key", "not a trusted key", &|p| {
        pack_dir(&src, &stranger_key, p, &[]);
    });
    case("onnx that fails to load", "does not load", &|p| {
        signed(p, key, "example-arm6", "0.1.0", &[("skill.toml", &manifest), ("policy.onnx", b"\x08\x07garbage")])
    });
    case("manifest that does not match its model", "does not load", &|p| {
        signed(p, key, "example-arm6", "0.1.0", &[("skill.toml", wide.as_bytes()), ("policy.onnx", &onnx)])
    });
    for (name, want, entries) in hostile(&json, &sig, &manifest, &onnx, key) {
        case(name, want, &|p| raw(p, &entries.iter().map(Raw::from).collect::<Vec<_>>()));
    }
    out
}

/// An owned raw entry.
pub struct RawOwned {
    pub name: String,
    pub kind: tar::EntryType,
    pub declared: u64,
    pub data: Vec<u8>,
}

impl<'a> From<&'a RawOwned> for Raw<'a> {
    fn from(r: &'a RawOwned) -> Raw<'a> {
        Raw { name: &r.name, kind: r.kind, declared: r.declared, data: &r.data }
    }
}

fn entry(name: &str, kind: tar::EntryType, declared: u64, data: &[u8]) -> RawOwned {
    RawOwned { name: name.into(), kind, declared, data: data.to_vec() }
}

fn file(name: &str, data: &[u8]) -> RawOwned {
    entry(name, tar::EntryType::Regular, data.len() as u64, data)
}

/// Archives made by an attacker holding a token (and, for some, a careless fleet's key): each
/// must be refused from its headers or its signed list, before the reader allocates or
/// decompresses what they claim. (name, words of the refusal, entries.)
pub fn hostile(
    json: &[u8],
    sig: &[u8],
    manifest: &[u8],
    onnx: &[u8],
    key: &Path,
) -> Vec<(&'static str, &'static str, Vec<RawOwned>)> {
    use tar::EntryType as T;
    let signed = || vec![file("bundle.json", json), file("bundle.sig", sig)];
    let with = |mut head: Vec<RawOwned>, rest: Vec<RawOwned>| {
        head.extend(rest);
        head
    };
    let (both_json, both_sig) =
        signed_parts(key, "example-arm6", "0.1.0", &[("a", 1, b"x"), ("a/b", 1, b"y"), ("skill.toml", 1, b"z")]);
    let (big_json, big_sig) = signed_parts(key, "example-arm6", "0.1.0", &[("policy.onnx", 1 << 31, onnx)]);
    let (short_json, short_sig) =
        signed_parts(key, "example-arm6", "0.1.0", &[("skill.toml", manifest.len() as u64 + 1, manifest)]);
    let folders: Vec<RawOwned> = (0..3000).map(|i| entry(&format!("skill/d{i}/"), T::Directory, 0, b"")).collect();
    vec![
        (
            "signed part last",
            "re-pack it with `skillgraft bundle pack`",
            vec![
                file("skill/skill.toml", manifest),
                file("skill/policy.onnx", onnx),
                file("bundle.json", json),
                file("bundle.sig", sig),
            ],
        ),
        // What took 9 GiB: a long name the reader would have held whole, then copied into
        // every message. Its header claims 1 GiB; 136 KiB of it are sent.
        (
            "long name of 1 GiB",
            "a long name of 1073741824 bytes, over the limit of 1024",
            vec![entry("././@LongLink", T::GNULongName, 1 << 30, &vec![b'a'; 136 << 10]), file("bundle.json", json)],
        ),
        ("PAX header", "PAX extension header", vec![entry("pax", T::XHeader, 1 << 30, &vec![b'9'; 64 << 10])]),
        (
            "long link",
            "long-link header",
            with(signed(), vec![entry("././@LongLink", T::GNULongLink, 12, b"/etc/passwd\0")]),
        ),
        // 64 GiB of zeros in a folder entry once went through the decompressor, unsigned.
        (
            "folder with data",
            "carries 68719476736 bytes of data",
            with(signed(), vec![entry("skill/d/", T::Directory, 64 << 30, &vec![0; 1 << 20])]),
        ),
        ("too many entries", "entries, over the limit", with(signed(), folders)),
        (
            "file and folder of one name",
            "both as a file and as a folder",
            vec![file("bundle.json", &both_json), file("bundle.sig", &both_sig)],
        ),
        (
            "listed file over the limit",
            "adds up to more than the limit",
            vec![file("bundle.json", &big_json), file("bundle.sig", &big_sig)],
        ),
        (
            "size unlike the signed list",
            "bytes in the archive but",
            vec![file("bundle.json", &short_json), file("bundle.sig", &short_sig), file("skill/skill.toml", manifest)],
        ),
    ]
}

/// The example skill with a branch on its input that makes 4 GiB of zeros and adds their sum (0)
/// to the observation: a valid skill whose loading or first inference needs more memory than a
/// bundle check worker may have. What a careless, trusted fleet could sign.
pub fn memory_hog(dir: &Path) -> PathBuf {
    use prost::Message;
    use tract_onnx::pb::{NodeProto, TensorProto, tensor_proto::DataType};
    let out = dir.join("hog");
    super::copy_tree(&example(), &out);
    let path = out.join("policy.onnx");
    let mut model = tract_onnx::pb::ModelProto::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
    let g = model.graph.as_mut().unwrap();
    for n in g.node.iter_mut() {
        for i in n.input.iter_mut().filter(|i| *i == "obs") {
            *i = "obs_hogged".into();
        }
    }
    g.initializer.push(TensorProto {
        name: "hog_shape".into(),
        dims: vec![1],
        data_type: DataType::Int64 as i32,
        int64_data: vec![1 << 30],
        ..Default::default()
    });
    let node = |op: &str, inputs: &[&str], output: &str| NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: format!("hog_{output}"),
        ..Default::default()
    };
    let mut zeros = node("ConstantOfShape", &["hog_shape"], "hog_zeros");
    zeros.attribute.push(super::onnx_builder::attr_t("value", super::onnx_builder::tensor("v", &[1], &[0.0])));
    let hog = vec![zeros, node("ReduceSum", &["hog_zeros"], "hog_sum"), node("Add", &["obs", "hog_sum"], "obs_hogged")];
    g.node.splice(0..0, hog);
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    out
}
