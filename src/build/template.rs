//! The template renderer every data file goes through: `{{name}}` is
//! replaced by the variable's value, and an unknown name is an error that
//! lists the known ones. Layers' `.tmpl` files and `layer.toml`, grub.cfg,
//! GRUB's early config and the distros' kernel paths use it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template {path} uses `{{{{{name}}}}}`, which is not one of: {known}")]
    UnknownVariable {
        path: PathBuf,
        name: String,
        known: String,
    },
}

/// `template` with every `{{name}}` replaced; `path` names the template in
/// errors. An unclosed `{{` is kept as it is.
pub fn render(
    template: &str,
    vars: &BTreeMap<&str, String>,
    path: &Path,
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = after[..end].trim();
        let value = vars
            .get(name)
            .ok_or_else(|| TemplateError::UnknownVariable {
                path: path.to_path_buf(),
                name: name.to_string(),
                known: vars.keys().copied().collect::<Vec<_>>().join(", "),
            })?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_known_variables_and_reject_unknown_ones() {
        let vars = BTreeMap::from([("isolated_cpus", "2-N".to_string())]);
        let path = Path::new("t.tmpl");
        assert_eq!(
            render("a={{isolated_cpus}};", &vars, path).unwrap(),
            "a=2-N;"
        );
        let err = render("{{nope}}", &vars, path).unwrap_err().to_string();
        assert!(
            err.contains("`{{nope}}`") && err.contains("isolated_cpus"),
            "{err}"
        );
    }
}
