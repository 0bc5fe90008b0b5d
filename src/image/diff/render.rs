//! The text report of `imgforge diff` (the JSON one is the serialized
//! [`ImageDiff`]).

use super::ImageDiff;

/// Runs of consecutive indices as `a-b`, for the text report.
pub fn ranges(indices: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = indices.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end = iter.next().expect("peeked");
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

impl ImageDiff {
    /// The report for people: what differs, level by level.
    pub fn render(&self, max_files: usize) -> String {
        let mut out = String::new();
        if self.identical {
            out.push_str(&format!(
                "identical: {} and {} have the same bytes ({} data blocks of 512 KiB)\n",
                self.a.display(),
                self.b.display(),
                self.data_blocks
            ));
            return out;
        }
        out.push_str(&format!(
            "{} of {} data blocks of 512 KiB differ ({:.1} %)\n",
            self.differing_blocks,
            self.data_blocks,
            percent(self.differing_blocks, self.data_blocks)
        ));
        if !self.table.is_empty() {
            out.push_str("\npartition table:\n");
            for d in &self.table {
                out.push_str(&format!("  {}: {} -> {}\n", d.what, d.a, d.b));
            }
        }
        for region in &self.regions {
            out.push_str(&format!(
                "\n{}{}{}: {} of {} data blocks differ",
                region.name,
                region
                    .number
                    .map(|n| format!(" (partition {n})"))
                    .unwrap_or_default(),
                region
                    .filesystem
                    .as_deref()
                    .map(|f| format!(", {f}"))
                    .unwrap_or_default(),
                region.differing_blocks,
                region.data_blocks
            ));
            if region.differing_blocks > 0 {
                out.push_str(&format!(
                    " (blocks {})",
                    ranges(&region.differing_block_indices)
                ));
            }
            out.push('\n');
            let Some(files) = &region.files else {
                continue;
            };
            if files.is_empty() {
                out.push_str("  no file differs (only metadata: inodes, allocation, journal)\n");
            }
            for file in files.iter().take(max_files) {
                let what: Vec<String> = file
                    .changes
                    .iter()
                    .map(|c| {
                        if c.a.is_empty() && c.b.is_empty() {
                            c.what.clone()
                        } else if c.what == "content" {
                            "content".to_string()
                        } else {
                            format!("{} {} -> {}", c.what, c.a, c.b)
                        }
                    })
                    .collect();
                out.push_str(&format!("  {}: {}\n", file.path, what.join("; ")));
            }
            if files.len() > max_files {
                out.push_str(&format!(
                    "  ... and {} more (--max-files, or --json for all)\n",
                    files.len() - max_files
                ));
            }
        }
        out
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_runs_are_compressed() {
        assert_eq!(ranges(&[1, 2, 3, 7, 9, 10]), "1-3,7,9-10");
        assert_eq!(ranges(&[]), "");
    }
}
