//! SBOM checks shared by the Debian (tests/sbom.rs) and Arch
//! (tests/arch_bootstrap.rs) tests: the independent validators.

use std::path::Path;
use std::process::Command;

use super::{Need, text};

/// The validators' commands (`.ci/setup` installs them).
pub const VALIDATORS: &[Need] = &[Need::Tool("pyspdxtools"), Need::Tool("python3")];

/// cyclonedx-python-lib's strict validation of a CycloneDX 1.5 file.
const CDX_CHECK: &str = "
import sys
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
err = JsonStrictValidator(SchemaVersion.V1_5).validate_str(open(sys.argv[1]).read())
if err is not None:
    print('invalid:', err)
    sys.exit(1)
";

/// Both documents pass their independent validators: pyspdxtools (SPDX
/// 2.3) and cyclonedx-python-lib's strict JSON validation (CycloneDX 1.5).
pub fn validate(spdx: &Path, cdx: &Path) {
    let cdx_lib = Command::new("python3")
        .args(["-c", "import cyclonedx.validation.json"])
        .status()
        .unwrap();
    assert!(
        cdx_lib.success(),
        "needs pip cyclonedx-python-lib[json-validation]: run .ci/setup"
    );
    let out = Command::new("pyspdxtools")
        .arg("-i")
        .arg(spdx)
        .output()
        .unwrap();
    assert!(out.status.success(), "pyspdxtools: {}", text(&out));
    assert!(!text(&out).contains("must"), "pyspdxtools: {}", text(&out));
    let out = Command::new("python3")
        .args(["-c", CDX_CHECK])
        .arg(cdx)
        .output()
        .unwrap();
    assert!(out.status.success(), "CycloneDX validation: {}", text(&out));
}

/// A CycloneDX component's property `name` (imgforge writes each once).
pub fn cdx_property(component: &serde_json::Value, name: &str) -> String {
    component["properties"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap()["value"]
        .as_str()
        .unwrap()
        .to_string()
}
