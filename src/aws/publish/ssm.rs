//! The SSM parameter that names the latest AMI of a family in one region
//! (`--ssm-parameter`, `ami promote`).
//!
//! Every write sends `DataType=aws:ec2:image`: an overwrite without it
//! silently turns the parameter into plain text. A parameter that names an
//! AMI of another image family is not overwritten unless asked
//! (`--ssm-overwrite`): two pipelines sharing a parameter by mistake would
//! otherwise flip each other's fleets.

use aws_sdk_ssm::types::ParameterType;

use super::PublishError;
use super::list;
use crate::aws::ami::names::{FAMILY_TAG, family_of};
use crate::aws::client::Clients;
use crate::aws::retry::{RetryError, with_retries};

pub const DATA_TYPE: &str = "aws:ec2:image";

/// The parameter's value, None when it does not exist.
pub async fn current(clients: &Clients, name: &str) -> Result<Option<String>, PublishError> {
    let result = with_retries(&clients.retry, "GetParameter", "GetParameter", || {
        clients.ssm.get_parameter().name(name).send()
    })
    .await;
    match result {
        Ok(output) => Ok(output
            .parameter()
            .and_then(|p| p.value())
            .map(str::to_string)),
        Err(RetryError::Api(api)) if api.code == "ParameterNotFound" => Ok(None),
        Err(err) => Err(err.into()),
    }
}

/// Points parameter `name` at `image_id`; answers the value it replaced
/// (None when it was absent or already right, in which case nothing is written).
pub async fn point(
    clients: &Clients,
    name: &str,
    image_id: &str,
    family: &str,
    overwrite_other_family: bool,
) -> Result<Option<String>, PublishError> {
    let region = clients.region.as_str();
    let previous = current(clients, name).await?;
    if previous.as_deref() == Some(image_id) {
        log::info!("{region}: SSM parameter {name} already names {image_id}");
        return Ok(None);
    }
    if let Some(value) = &previous
        && !overwrite_other_family
    {
        check_family(clients, name, value, family).await?;
    }
    with_retries(
        &clients.retry,
        "PutParameter",
        format_args!("PutParameter {name}"),
        || {
            clients
                .ssm
                .put_parameter()
                .name(name)
                .value(image_id)
                .r#type(ParameterType::String)
                .data_type(DATA_TYPE)
                .overwrite(true)
                .description(format!("AMI of image family {family} (imgforge)"))
                .send()
        },
    )
    .await?;
    eprintln!(
        "imgforge: {region}: SSM parameter {name} -> {image_id}{}",
        previous
            .as_ref()
            .map(|p| format!(" (was {p})"))
            .unwrap_or_default()
    );
    Ok(previous)
}

/// Refuses when the parameter's current value is not an AMI of `family`.
async fn check_family(
    clients: &Clients,
    name: &str,
    value: &str,
    family: &str,
) -> Result<(), PublishError> {
    let region = clients.region.as_str();
    if !value.starts_with("ami-") {
        return Err(PublishError::Refused(format!(
            "{region}: SSM parameter {name} holds {value:?}, which is not an AMI id; \
pass --ssm-overwrite to replace it"
        )));
    }
    let Some(info) = list::by_id(clients, value).await? else {
        log::warn!(
            "{region}: SSM parameter {name} names {value}, which no longer exists; overwriting it"
        );
        return Ok(());
    };
    let theirs = info
        .tags
        .get(FAMILY_TAG)
        .cloned()
        .unwrap_or_else(|| family_of(&info.name));
    if theirs != family {
        return Err(PublishError::Refused(format!(
            "{region}: SSM parameter {name} names {value} ({:?}) of image family {theirs:?}, not \
{family:?}; pass --ssm-overwrite to point it at another family",
            info.name
        )));
    }
    Ok(())
}
