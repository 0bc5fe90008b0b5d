//! SPDX 2.3 JSON: the image is the package the document describes; it
//! contains one package per installed package and the kernel.

use serde_json::{Value, json};

use super::{Component, Inventory};
use crate::sys::calendar::epoch_to_iso;

/// The document, pretty-printed with a final newline.
pub fn document(inv: &Inventory) -> String {
    let mut packages = vec![json!({
        "SPDXID": "SPDXRef-Image",
        "name": inv.image_name,
        "versionInfo": inv.image_version,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "comment": "The disk image imgforge built; its manifest is /etc/imgforge/manifest.json",
    })];
    let mut relationships = vec![relation("SPDXRef-DOCUMENT", "DESCRIBES", "SPDXRef-Image")];
    for (i, c) in inv.packages.iter().enumerate() {
        let id = package_id(i, c);
        relationships.push(relation("SPDXRef-Image", "CONTAINS", &id));
        packages.push(package(&id, c));
    }
    packages.push(json!({
        "SPDXID": "SPDXRef-Kernel",
        "name": "linux",
        "versionInfo": inv.kernel_version,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "comment": "The kernel the image boots",
    }));
    relationships.push(relation("SPDXRef-Image", "CONTAINS", "SPDXRef-Kernel"));
    if let Some(i) = inv
        .kernel_package()
        .and_then(|k| inv.packages.iter().position(|c| std::ptr::eq(c, k)))
    {
        let id = package_id(i, &inv.packages[i]);
        relationships.push(relation(&id, "CONTAINS", "SPDXRef-Kernel"));
    }
    let doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": inv.image_name,
        "documentNamespace": format!(
            "https://imgforge.invalid/spdx/{}/{}",
            inv.image_name,
            inv.digest()
        ),
        "creationInfo": {
            "created": epoch_to_iso(inv.created),
            "creators": [format!("Tool: imgforge-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": packages,
        "relationships": relationships,
    });
    serde_json::to_string_pretty(&doc).expect("the SBOM serializes") + "\n"
}

fn package(id: &str, c: &Component) -> Value {
    let p = &c.package;
    json!({
        "SPDXID": id,
        "name": p.name,
        "versionInfo": p.version,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": c.licence.as_deref().unwrap_or("NOASSERTION"),
        "copyrightText": "NOASSERTION",
        "sourceInfo": format!("built from the source package {} {}", p.source, p.source_version),
        "comment": format!("architecture {}", p.architecture),
        "externalRefs": [{
            "referenceCategory": "PACKAGE-MANAGER",
            "referenceType": "purl",
            "referenceLocator": c.purl,
        }],
    })
}

/// `SPDXRef-Package-3-libstdc--6-amd64`: SPDX ids allow letters, digits,
/// `.` and `-`; the index keeps them unique.
fn package_id(index: usize, c: &Component) -> String {
    let clean: String = format!("{}-{}", c.package.name, c.package.architecture)
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || ch == '.' {
                ch
            } else {
                '-'
            }
        })
        .collect();
    format!("SPDXRef-Package-{index}-{clean}")
}

fn relation(from: &str, kind: &str, to: &str) -> Value {
    json!({
        "spdxElementId": from,
        "relationshipType": kind,
        "relatedSpdxElement": to,
    })
}
