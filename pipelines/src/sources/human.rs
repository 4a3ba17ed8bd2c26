use std::path::Path;

use super::*;

/// Reads a second annotation: a CSV with the header `split,index,label`, one row per
/// relabelled example (`index` within its split; `label` a class name or number).
/// Returns `(line, split, index, label id)` per row.
pub fn read_human_labels(path: &Path, class_names: &[String]) -> Result<Vec<(usize, String, usize, u32)>, SourceError> {
    let text = cache::read_input_text(path, LIMITS.human_labels_bytes, "a human labels file")?;
    let mut lines = text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty());
    match lines.next() {
        Some((_, header)) if header.split(',').map(str::trim).eq(["split", "index", "label"]) => {}
        Some((_, header)) => {
            return Err(file_error(
                path,
                format!("line 1, column 1: header must be `split,index,label`, found `{header}`"),
            ))
        }
        None => return Err(file_error(path, "empty file (expected the header `split,index,label`)")),
    }
    let mut rows = Vec::new();
    for (line_index, line) in lines {
        let line_number = line_index + 1;
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if cells.len() != 3 {
            return Err(file_error(
                path,
                format!("line {line_number}: {} cells, expected 3 (split,index,label)", cells.len()),
            ));
        }
        let at = |column: usize, message: String| {
            file_error(path, format!("line {line_number}, column {column}: {message}"))
        };
        if !matches!(cells[0], "train" | "val" | "test") {
            return Err(at(1, format!("split `{}` is not train, val or test", cells[0])));
        }
        let index: usize = cells[1].parse().map_err(|_| at(2, format!("`{}` is not an example index", cells[1])))?;
        let label = match class_names.iter().position(|name| name == cells[2]) {
            Some(id) => id as u32,
            None => match cells[2].parse::<u32>() {
                Ok(id) if (id as usize) < class_names.len() => id,
                _ => return Err(at(3, format!("`{}` is not a class name or number", cells[2]))),
            },
        };
        rows.push((line_number, cells[0].to_string(), index, label));
    }
    Ok(rows)
}
