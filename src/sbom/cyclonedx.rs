//! CycloneDX 1.5 JSON: the image is the BOM's subject (metadata.component);
//! the components are the installed packages and the kernel.

use serde_json::{Value, json};

use super::{Component, Inventory};
use crate::sys::calendar::epoch_to_iso;

const IMAGE_REF: &str = "image";
const KERNEL_REF: &str = "kernel";

/// The document, pretty-printed with a final newline.
pub fn document(inv: &Inventory) -> String {
    let mut components: Vec<Value> = inv.packages.iter().map(component).collect();
    components.push(json!({
        "type": "operating-system",
        "bom-ref": KERNEL_REF,
        "name": "linux",
        "version": inv.kernel_version,
        "description": match inv.kernel_package() {
            Some(k) => format!("The kernel the image boots, from {}", k.package.name),
            None => "The kernel the image boots".to_string(),
        },
    }));
    let mut refs: Vec<String> = inv.packages.iter().map(|c| c.purl.clone()).collect();
    refs.push(KERNEL_REF.into());
    let doc = json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": format!("urn:uuid:{}", uuid_of(&inv.digest())),
        "version": 1,
        "metadata": {
            "timestamp": epoch_to_iso(inv.created),
            "tools": {
                "components": [{
                    "type": "application",
                    "name": "imgforge",
                    "version": env!("CARGO_PKG_VERSION"),
                }],
            },
            "component": {
                "type": "operating-system",
                "bom-ref": IMAGE_REF,
                "name": inv.image_name,
                "version": inv.image_version,
            },
        },
        "components": components,
        "dependencies": [{ "ref": IMAGE_REF, "dependsOn": refs }],
    });
    serde_json::to_string_pretty(&doc).expect("the SBOM serializes") + "\n"
}

fn component(c: &Component) -> Value {
    let p = &c.package;
    let mut value = json!({
        "type": "library",
        "bom-ref": c.purl,
        "name": p.name,
        "version": p.version,
        "purl": c.purl,
        "properties": [
            { "name": "imgforge:architecture", "value": p.architecture },
            { "name": "imgforge:source-package", "value": p.source },
            { "name": "imgforge:source-version", "value": p.source_version },
        ],
    });
    if let Some(licence) = &c.licence {
        value["licenses"] = if licence.contains(' ') {
            json!([{ "expression": licence }])
        } else {
            json!([{ "license": { "id": licence } }])
        };
    }
    value
}

/// A UUID (version 4 layout) made from a hex digest: the same BOM, the
/// same serial number.
fn uuid_of(digest: &str) -> String {
    let h = digest.as_bytes();
    let s = |a: usize, b: usize| String::from_utf8_lossy(&h[a..b]).into_owned();
    format!(
        "{}-{}-4{}-{}{}-{}",
        s(0, 8),
        s(8, 12),
        s(13, 16),
        // The variant: 8, 9, a or b.
        ['8', '9', 'a', 'b'][usize::from(h[16] % 4)],
        s(17, 20),
        s(20, 32)
    )
}
