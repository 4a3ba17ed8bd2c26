//! `pipe init --data SOURCE`: writes a commented pipe.toml for a new dataset (every
//! knob at its default, `data.source` set), after checking the source names data that
//! exists.

use workspace::KnobValue;

use crate::project::{failed, usage, Failure, Project};
use crate::text::say;

pub fn run(project: &Project, source: &str, force: bool) -> Result<u8, Failure> {
    let file = &project.file;
    if file.exists() && !force {
        return Err(usage(anyhow::anyhow!(
            "{} exists; pass --force to overwrite it, or -C DIR for another directory",
            file.display()
        )));
    }
    let base_dir = file.parent().map_or_else(|| std::path::PathBuf::from("."), std::path::Path::to_path_buf);
    let parsed = pipelines::sources::Source::parse(source, &base_dir)
        .map_err(|error| usage(anyhow::anyhow!("--data {source}: {error}")))?;
    let files = parsed.files().map_err(|error| usage(anyhow::anyhow!("--data {source}: {error}")))?;
    if let Some(missing) = files.iter().find(|file| !file.optional && !file.path.is_file()) {
        return Err(usage(anyhow::anyhow!("--data {source}: no file at {}", missing.path.display())));
    }
    let mut schema = pipelines::knobs::schema();
    for spec in schema.iter_mut().filter(|spec| spec.name == pipelines::ids::knob::DATA_SOURCE.as_str()) {
        spec.default = KnobValue::Str(source.to_string());
    }
    let text = format!(
        "# pipe.toml for {source}, written by `pipe init`: every knob at its default.\n\
         # Next: `pipe build inspect` (become one with the data), then `pipe build overfit`.\n{}",
        workspace::config::example_toml(&schema)
    );
    // The written file must load as it will be read.
    workspace::Config::parse(&pipelines::knobs::schema(), &text, &file.display().to_string())
        .map_err(|error| failed(anyhow::anyhow!("the generated file does not parse: {error}")))?;
    if let Some(dir) = file.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| failed(anyhow::anyhow!("creating {}: {e}", dir.display())))?;
    }
    std::fs::write(file, text).map_err(|e| failed(anyhow::anyhow!("writing {}: {e}", file.display())))?;
    say!("wrote {} for {source}; next: pipe build inspect", file.display());
    Ok(0)
}
