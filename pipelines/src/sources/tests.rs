use super::fixtures::*;
use super::*;
use crate::data::{prepare, Normalize};

/// Loads and, when that works, prepares: neither may panic.
fn exercise(source: &Source, options: &SourceOptions) -> Result<(), String> {
    let raw = source.load(options).map_err(|e| e.to_string())?;
    prepare(&raw, "fuzz", &[0.6, 0.2, 0.2], 0, Normalize::Standard).map(|_| ()).map_err(|e| e.to_string())
}

/// The memory bound of one property-test case: every input is a few KB, so a
/// loader that allocates by what a header claims would show here.
const CASE_BYTES: usize = 64 << 20;

/// [`exercise`], returning whether it loaded and recording its peak allocation.
fn bounded(peak: &mut usize, run: impl FnOnce() -> bool) -> bool {
    let (ok, bytes) = super::counting::peak_bytes(run);
    *peak = (*peak).max(bytes);
    ok
}

#[test]
fn every_fixture_loads() {
    let dir = temp_dir("fixtures");
    write_all(&dir.join("idx"), &idx_files(6));
    write_all(&dir.join("cifar"), &cifar_files(2));
    std::fs::write(dir.join("data.csv"), csv_text(12)).unwrap();
    for (name, bytes) in image_fixture() {
        write_all(&dir.join("pictures"), &[(name.as_str(), bytes)]);
    }
    let options = SourceOptions { image_size: (5, 6), ..SourceOptions::default() };
    for source in ["idx:idx", "cifar10:cifar", "csv:data.csv", "images:pictures"] {
        let source = Source::parse(source, &dir).unwrap();
        let raw = source.load(&options).unwrap_or_else(|e| panic!("{source:?}: {e}"));
        assert!(raw.len() >= 6, "{source:?}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn degenerate_inputs_are_errors_not_panics() {
    let dir = temp_dir("degenerate");
    // A CSV with only the label column.
    std::fs::write(dir.join("labels.csv"), "label\na\nb\na\n").unwrap();
    let err = exercise(&Source::Csv(dir.join("labels.csv")), &SourceOptions::default()).unwrap_err();
    assert!(err.contains("no feature columns"), "{err}");
    // IDX images of width 0.
    let idx = dir.join("idx");
    let mut files = idx_files(4);
    files[0] = ("train-images-idx3-ubyte.gz", gzip(&idx_bytes(&[4, 4, 0], &[])));
    write_all(&idx, &files);
    let err = exercise(&Source::Idx(idx.clone()), &SourceOptions::default()).unwrap_err();
    assert!(err.contains("images of 4x0 pixels"), "{err}");
    // No training images at all.
    let mut files = idx_files(4);
    files[0] = ("train-images-idx3-ubyte.gz", gzip(&idx_bytes(&[0, 4, 4], &[])));
    files[1] = ("train-labels-idx1-ubyte", idx_bytes(&[0], &[]));
    write_all(&idx, &files);
    let err = exercise(&Source::Idx(idx.clone()), &SourceOptions::default()).unwrap_err();
    assert!(err.contains("no training images"), "{err}");
    // Two channels are not a format.
    let options = SourceOptions { image_channels: 2, ..SourceOptions::default() };
    let err = exercise(&Source::Images(dir.clone()), &options).unwrap_err();
    assert!(err.contains("1 (grayscale) or 3 (RGB)"), "{err}");
    // A split with no validation examples is an error, not a NaN later.
    std::fs::write(dir.join("two.csv"), "a,label\n1,x\n2,y\n").unwrap();
    let raw = Source::Csv(dir.join("two.csv")).load(&SourceOptions::default()).unwrap();
    let err = prepare(&raw, "csv", &[0.6, 0.2, 0.2], 0, Normalize::Standard).unwrap_err().to_string();
    assert!(err.contains("no validation examples"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn gzip_bomb_is_refused_before_it_is_decompressed() {
    let dir = temp_dir("bomb");
    let mut files = idx_files(4);
    // 256 MiB of zeros behind a header that declares 4 images of 4x4: about 250 KB of gzip.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut encoder, &idx_bytes(&[4, 4, 4], &[])).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..256 {
        std::io::Write::write_all(&mut encoder, &zeros).unwrap();
    }
    files[0] = ("train-images-idx3-ubyte.gz", encoder.finish().unwrap());
    write_all(&dir, &files);
    let started = std::time::Instant::now();
    let err = Source::Idx(dir.clone()).load(&SourceOptions::default()).unwrap_err().to_string();
    assert!(err.contains("gzip trailer"), "{err}");
    assert!(started.elapsed().as_secs_f64() < 1.0, "refused before decompressing: {:?}", started.elapsed());

    // A header (and a forged trailer) declaring 900 MB that a few KB of gzip cannot hold.
    let mut big = gzip(&idx_bytes(&[1, 30000, 30000], &[0; 1000]));
    let claimed: u32 = 4 + 12 + 900_000_000;
    let len = big.len();
    big[len - 4..].copy_from_slice(&claimed.to_le_bytes());
    let mut files = idx_files(4);
    files[0] = ("train-images-idx3-ubyte.gz", big);
    write_all(&dir, &files);
    let err = Source::Idx(dir.clone()).load(&SourceOptions::default()).unwrap_err().to_string();
    assert!(err.contains("bytes of gzip can hold"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Property test: mutated and random IDX files (raw and gzip), CIFAR batches, CSV
/// files, PNG folders and human-label files never panic, and each case is bounded
/// (the limits keep every allocation to what the file can hold).
#[test]
fn loaders_survive_arbitrary_and_mutated_input() {
    let dir = temp_dir("fuzz");
    let mut gen = Gen(0x5eed);
    let started = std::time::Instant::now();
    let mut cases = 0;
    let mut loaded = 0;
    let mut peak = 0;
    // IDX, raw and gzip: mutate one of the four files (or its compressed form).
    let idx = dir.join("idx");
    for _ in 0..1500 {
        std::fs::remove_dir_all(&idx).ok();
        let mut files = idx_files(1 + gen.below(5) as u32);
        let which = gen.below(4);
        files[which].1 = if gen.below(2) == 0 || !files[which].0.ends_with(".gz") {
            gen.mutate(files[which].1.clone())
        } else {
            let raw = idx_bytes(&[3, 4, 4], &[1; 48]);
            gzip(&gen.mutate(raw))
        };
        if gen.below(4) == 0 {
            files.push(("classes.txt", gen.mutate(b"zero\none\ntwo\n".to_vec())));
        }
        write_all(&idx, &files);
        cases += 1;
        loaded +=
            usize::from(bounded(&mut peak, || exercise(&Source::Idx(idx.clone()), &SourceOptions::default()).is_ok()));
    }
    // CIFAR-10 batches.
    let cifar = dir.join("cifar");
    let valid = cifar_files(1);
    write_all(&cifar, &valid);
    for _ in 0..300 {
        let which = gen.below(valid.len());
        let mutated = gen.mutate(valid[which].1.clone());
        write_all(&cifar, &[(valid[which].0, mutated)]);
        if gen.below(3) == 0 {
            write_all(&cifar, &[("batches.meta.txt", gen.bytes(40))]);
        }
        cases += 1;
        loaded += usize::from(bounded(&mut peak, || {
            exercise(&Source::Cifar10(cifar.clone()), &SourceOptions::default()).is_ok()
        }));
        write_all(&cifar, &[(valid[which].0, valid[which].1.clone())]);
    }
    // CSV with random options.
    let csv = dir.join("data.csv");
    for _ in 0..2000 {
        let text = csv_text(gen.below(20)).into_bytes();
        let bytes = if gen.below(3) == 0 {
            let tokens: [&[u8]; 9] = [b",", b"\n", b"\"", b"nan", b"-inf", b"1e999", b"", b"\xff", b"label"];
            let mut bytes = text;
            for _ in 0..1 + gen.below(4) {
                let at = gen.below(bytes.len() + 1);
                let token = tokens[gen.below(tokens.len())];
                bytes.splice(at..at, token.iter().copied());
            }
            bytes
        } else {
            gen.mutate(text)
        };
        std::fs::write(&csv, bytes).unwrap();
        let options = SourceOptions {
            csv_label: ["label", "last", "0", "a"][gen.below(4)].into(),
            csv_header: gen.below(4) != 0,
            ..SourceOptions::default()
        };
        cases += 1;
        loaded += usize::from(bounded(&mut peak, || exercise(&Source::Csv(csv.clone()), &options).is_ok()));
    }
    // PNG folders.
    let pictures = dir.join("pictures");
    let valid = image_fixture();
    for _ in 0..300 {
        std::fs::remove_dir_all(&pictures).ok();
        for (name, bytes) in &valid {
            write_all(&pictures, &[(name.as_str(), bytes.clone())]);
        }
        let which = gen.below(valid.len());
        let mutated = gen.mutate(valid[which].1.clone());
        write_all(&pictures, &[(valid[which].0.as_str(), mutated)]);
        let options = SourceOptions {
            image_size: (1 + gen.below(8), 1 + gen.below(8)),
            image_channels: [1, 3][gen.below(2)],
            ..SourceOptions::default()
        };
        cases += 1;
        loaded += usize::from(bounded(&mut peak, || exercise(&Source::Images(pictures.clone()), &options).is_ok()));
    }
    // Human labels.
    let human = dir.join("human.csv");
    let classes: Vec<String> = ["x", "y", "z"].iter().map(|s| s.to_string()).collect();
    for _ in 0..1000 {
        let bytes = gen.mutate(b"split,index,label\ntrain,0,x\nval,3,2\ntest,1,z\n".to_vec());
        std::fs::write(&human, bytes).unwrap();
        cases += 1;
        loaded += usize::from(bounded(&mut peak, || read_human_labels(&human, &classes).is_ok()));
    }
    assert!(loaded > 100 && loaded < cases, "{loaded} of {cases} loaded: the mutations should hit both sides");
    eprintln!("{cases} cases, {loaded} loaded, at most {peak} bytes allocated at once");
    assert!(peak < CASE_BYTES, "a case allocated {peak} bytes at once");
    assert!(started.elapsed().as_secs() < 60, "{cases} cases took {:?}", started.elapsed());
    std::fs::remove_dir_all(&dir).ok();
}

/// Property test: mutated versions of the full example `pipe.toml`, and random
/// bytes, never make parsing (or the data-knob checks) panic.
#[test]
fn pipe_toml_parsing_survives_arbitrary_and_mutated_input() {
    let schema = crate::knobs::schema();
    let example = include_str!("../../../examples/digits/pipe.toml");
    let dir = temp_dir("toml");
    let cache = cache::Cache::open(dir.join(".pipe")).unwrap();
    let mut gen = Gen(0x70_6d6c);
    let tokens: [&str; 14] = [
        "[",
        "]",
        "=",
        "\"",
        "\n",
        "1e999",
        "-1",
        "nan",
        "[1, 2, 3]",
        "model.hidden = [",
        "99999999999999999999",
        "{ a = 1 }",
        "'''",
        "\u{0}",
    ];
    let mut accepted = 0;
    for case in 0..3000 {
        let text: Vec<u8> = match case % 3 {
            0 => gen.mutate(example.as_bytes().to_vec()),
            1 => {
                let mut text = example.as_bytes().to_vec();
                for _ in 0..1 + gen.below(3) {
                    let at = gen.below(text.len() + 1);
                    let token = tokens[gen.below(tokens.len())];
                    text.splice(at..at, token.bytes());
                }
                text
            }
            _ => {
                let n = gen.below(200);
                gen.bytes(n)
            }
        };
        let text = String::from_utf8_lossy(&text);
        let (parsed, bytes) = super::counting::peak_bytes(|| workspace::Config::parse(&schema, &text, "pipe.toml"));
        assert!(bytes < CASE_BYTES, "parsing allocated {bytes} bytes at once");
        if let Ok(config) = parsed {
            accepted += 1;
            let _ = crate::fingerprints(&config, &dir, cache.stats());
        }
    }
    assert!(accepted > 10, "{accepted}");
    // A 1,000-entry hidden list and a 1 MB key are errors, at once.
    let hidden = format!("model.hidden = [{}]\n", vec!["8"; 1000].join(", "));
    let err = workspace::Config::parse(&schema, &hidden, "pipe.toml").unwrap_err();
    assert!(err.to_string().contains("at most 64 values"), "{err}");
    let started = std::time::Instant::now();
    let key = "k".repeat(1 << 20);
    let err = workspace::Config::parse(&schema, &format!("{key} = 1\n"), "pipe.toml").unwrap_err();
    assert!(err.to_string().len() < 400, "the key is not echoed whole");
    assert!(started.elapsed().as_secs_f64() < 1.0, "{:?}", started.elapsed());
    std::fs::remove_dir_all(&dir).ok();
}
