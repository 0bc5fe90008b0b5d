//! What production launches from, in one region: the AMIs `ami prune` must
//! never delete. An AMI is in use when
//! - an SSM parameter of data type `aws:ec2:image` names it (after `ami
//!   promote` rolled back to an older AMI, the fleet launches from that one);
//! - it has deregistration protection (DescribeImages'
//!   `DeregistrationProtection` is anything but `disabled`);
//! - a launch template's default or latest version uses it, where the API
//!   answers (a denied DescribeLaunchTemplates is reported, not fatal).

use std::collections::BTreeMap;

use aws_sdk_ssm::types::ParameterStringFilter;

use super::PublishError;
use super::list::ImageInfo;
use super::ssm::DATA_TYPE;
use crate::aws::client::Clients;
use crate::aws::retry::{RetryError, with_retries};

/// Why each AMI must stay, by AMI id; and what could not be checked.
#[derive(Debug, Clone, Default)]
pub struct InUse {
    pub reasons: BTreeMap<String, Vec<String>>,
    /// Checks the API did not answer (e.g. launch templates, access denied).
    pub unchecked: Vec<String>,
}

impl InUse {
    fn add(&mut self, image_id: &str, reason: String) {
        let list = self.reasons.entry(image_id.to_string()).or_default();
        if !list.contains(&reason) {
            list.push(reason);
        }
    }

    pub fn reason(&self, image_id: &str) -> Option<String> {
        self.reasons.get(image_id).map(|r| r.join("; "))
    }
}

/// The AMIs among `candidates` that something in the region uses.
pub async fn find(clients: &Clients, candidates: &[ImageInfo]) -> Result<InUse, PublishError> {
    let mut in_use = InUse::default();
    for image in candidates {
        if let Some(state) = protection(image) {
            in_use.add(
                &image.image_id,
                format!("deregistration protection is {state}"),
            );
        }
    }
    for (name, value) in image_parameters(clients).await? {
        in_use.add(&value, format!("SSM parameter {name} names it"));
    }
    match launch_template_images(clients).await {
        Ok(used) => {
            for (template, version, image_id) in used {
                in_use.add(
                    &image_id,
                    format!("launch template {template} version {version} uses it"),
                );
            }
        }
        Err(PublishError::Api(api)) => {
            let text = format!(
                "{}: launch templates not checked ({}: {})",
                clients.region, api.code, api.message
            );
            log::warn!("{text}");
            in_use.unchecked.push(text);
        }
        Err(other) => return Err(other),
    }
    Ok(in_use)
}

/// The image's deregistration protection, when it is on (or cooling down).
pub fn protection(image: &ImageInfo) -> Option<&str> {
    image
        .deregistration_protection
        .as_deref()
        .filter(|state| !state.is_empty() && *state != "disabled")
}

/// Every SSM parameter of data type `aws:ec2:image` in the region, with its
/// value. DescribeParameters is asked to filter by data type; a service that
/// does not know that filter is asked for every parameter instead.
async fn image_parameters(clients: &Clients) -> Result<Vec<(String, String)>, PublishError> {
    let filter = ParameterStringFilter::builder()
        .key("DataType")
        .option("Equals")
        .values(DATA_TYPE)
        .build()
        .expect("key is set");
    let names = match parameter_names(clients, Some(filter)).await {
        Ok(names) => names,
        Err(RetryError::Api(api))
            if api.code.contains("Validation") || api.code.contains("Filter") =>
        {
            parameter_names(clients, None).await?
        }
        Err(err) => return Err(err.into()),
    };
    let mut values = Vec::new();
    for chunk in names.chunks(10) {
        let output = with_retries(&clients.retry, "GetParameters", "GetParameters", || {
            clients
                .ssm
                .get_parameters()
                .set_names(Some(chunk.to_vec()))
                .send()
        })
        .await?;
        values.extend(
            output
                .parameters()
                .iter()
                .filter_map(|p| Some((p.name()?.to_string(), p.value()?.to_string()))),
        );
    }
    Ok(values)
}

async fn parameter_names(
    clients: &Clients,
    filter: Option<ParameterStringFilter>,
) -> Result<Vec<String>, RetryError> {
    let mut names = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let output = with_retries(
            &clients.retry,
            "DescribeParameters",
            "DescribeParameters",
            || {
                clients
                    .ssm
                    .describe_parameters()
                    .set_parameter_filters(filter.clone().map(|f| vec![f]))
                    .set_next_token(next.clone())
                    .send()
            },
        )
        .await?;
        names.extend(
            output
                .parameters()
                .iter()
                .filter(|p| p.data_type() == Some(DATA_TYPE))
                .filter_map(|p| p.name().map(str::to_string)),
        );
        next = output.next_token().map(str::to_string);
        if next.is_none() {
            return Ok(names);
        }
    }
}

/// (template name, version, AMI id) of every launch template's default and
/// latest version that names an AMI.
async fn launch_template_images(
    clients: &Clients,
) -> Result<Vec<(String, String, String)>, PublishError> {
    let mut templates = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let output = with_retries(
            &clients.retry,
            "DescribeLaunchTemplates",
            "DescribeLaunchTemplates",
            || {
                clients
                    .ec2
                    .describe_launch_templates()
                    .set_next_token(next.clone())
                    .send()
            },
        )
        .await?;
        templates.extend(
            output
                .launch_templates()
                .iter()
                .filter_map(|t| t.launch_template_id().map(str::to_string)),
        );
        next = output.next_token().map(str::to_string);
        if next.is_none() {
            break;
        }
    }
    let mut used = Vec::new();
    for id in templates {
        let output = with_retries(
            &clients.retry,
            "DescribeLaunchTemplateVersions",
            format_args!("DescribeLaunchTemplateVersions {id}"),
            || {
                clients
                    .ec2
                    .describe_launch_template_versions()
                    .launch_template_id(&id)
                    .versions("$Default")
                    .versions("$Latest")
                    .send()
            },
        )
        .await?;
        for version in output.launch_template_versions() {
            let Some(image_id) = version.launch_template_data().and_then(|d| d.image_id()) else {
                continue;
            };
            let name = version.launch_template_name().unwrap_or(id.as_str());
            let number = version
                .version_number()
                .map(|n| n.to_string())
                .unwrap_or_default();
            used.push((name.to_string(), number, image_id.to_string()));
        }
    }
    Ok(used)
}
