//! EnableImageDeregistrationProtection in one region
//! (`--deregistration-protection`): the AMI cannot be deregistered (by
//! `ami prune`, a console click or another pipeline) until protection is
//! disabled again.

use super::PublishError;
use crate::aws::client::Clients;
use crate::aws::retry::with_retries;

pub async fn apply(clients: &Clients, image_id: &str) -> Result<(), PublishError> {
    with_retries(
        &clients.retry,
        "EnableImageDeregistrationProtection",
        format_args!("EnableImageDeregistrationProtection {image_id}"),
        || {
            clients
                .ec2
                .enable_image_deregistration_protection()
                .image_id(image_id)
                .send()
        },
    )
    .await?;
    Ok(())
}
