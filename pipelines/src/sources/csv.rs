use super::*;

pub(super) fn load_csv(reader: &Reader, options: &SourceOptions) -> Result<RawDataset, SourceError> {
    let path = reader.path("data.csv")?;
    let bytes = reader.read("data.csv", LIMITS.csv_bytes, "a CSV dataset")?.unwrap_or_default();
    let text = String::from_utf8(bytes).map_err(|err| {
        let offset = err.utf8_error().valid_up_to();
        let line = err.as_bytes()[..offset].iter().filter(|&&b| b == b'\n').count() + 1;
        file_error(path, format!("line {line}: not UTF-8 text"))
    })?;
    let mut lines = text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty());
    let split = |line: &str| line.split(',').map(|cell| cell.trim().to_string()).collect::<Vec<_>>();
    let (header, first_data): (Vec<String>, Option<(usize, &str)>) = if options.csv_header {
        match lines.next() {
            Some((_, line)) => (split(line), None),
            None => return Err(file_error(path, "empty CSV file")),
        }
    } else {
        let first = lines.next().ok_or_else(|| file_error(path, "empty CSV file"))?;
        ((0..split(first.1).len()).map(|i| i.to_string()).collect(), Some(first))
    };
    let label_column = match header.iter().position(|name| *name == options.csv_label) {
        Some(column) => column,
        None if options.csv_label == "last" => header.len().saturating_sub(1),
        None => {
            return Err(file_error(
                path,
                format!("no label column `{}` (data.csv.label); columns: {}", options.csv_label, header.join(", ")),
            ))
        }
    };
    if header.len() < 2 {
        return Err(file_error(
            path,
            format!("no feature columns: the only column is the label `{}`", header[label_column]),
        ));
    }
    let mut x = Vec::new();
    // Labels as ids in order of first appearance; renumbered below.
    let mut ids: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    let mut first_seen: Vec<String> = Vec::new();
    let mut raw_labels: Vec<u32> = Vec::new();
    for (line_index, line) in first_data.into_iter().chain(lines) {
        let cells = split(line);
        let row = line_index + 1;
        if cells.len() != header.len() {
            return Err(file_error(
                path,
                format!("line {row}: {} cells, expected {} (ragged row)", cells.len(), header.len()),
            ));
        }
        for (column, cell) in cells.iter().enumerate() {
            if column == label_column {
                if cell.is_empty() {
                    return Err(file_error(
                        path,
                        format!("line {row}, column {} (`{}`): missing label", column + 1, header[column]),
                    ));
                }
                let id = match ids.get(cell) {
                    Some(id) => *id,
                    None => {
                        if first_seen.len() >= LIMITS.csv_classes {
                            return Err(file_error(
                                path,
                                format!(
                                    "line {row}, column {} (`{}`): more than {} distinct labels (is data.csv.label the label column?)",
                                    column + 1,
                                    header[column],
                                    LIMITS.csv_classes
                                ),
                            ));
                        }
                        let id = first_seen.len() as u32;
                        ids.insert(cell.clone(), id);
                        first_seen.push(cell.clone());
                        id
                    }
                };
                raw_labels.push(id);
                continue;
            }
            let value: f32 = cell.parse().map_err(|_| {
                let what = if cell.is_empty() {
                    "missing value".to_string()
                } else {
                    format!("cannot parse `{cell}` as a number")
                };
                file_error(path, format!("line {row}, column {} (`{}`): {what}", column + 1, header[column]))
            })?;
            x.push(value);
        }
    }
    if raw_labels.is_empty() {
        return Err(file_error(path, "no data rows"));
    }
    // Class names: the distinct labels, in numeric order when they are all numbers.
    let mut names: Vec<String> = first_seen.clone();
    names.sort();
    if names.iter().all(|n| n.parse::<i64>().is_ok()) {
        names.sort_by_key(|n| n.parse::<i64>().unwrap_or_default());
    }
    let renumber: Vec<u32> =
        first_seen.iter().map(|l| names.iter().position(|n| n == l).unwrap_or_default() as u32).collect();
    let y = raw_labels.iter().map(|&id| renumber[id as usize]).collect();
    Ok(RawDataset { x, y, shape: vec![header.len() - 1], class_names: names, test_start: None, value_range: None })
}
