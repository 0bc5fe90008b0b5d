//! EnableImageDeprecation in one region (Packer: deprecate_at).

use super::PublishError;
use crate::aws::client::Clients;
use crate::aws::retry::with_retries;

pub async fn apply(clients: &Clients, image_id: &str, at: i64) -> Result<(), PublishError> {
    let when = aws_smithy_types::DateTime::from_secs(at);
    with_retries(
        &clients.retry,
        "EnableImageDeprecation",
        format_args!("EnableImageDeprecation {image_id}"),
        || {
            clients
                .ec2
                .enable_image_deprecation()
                .image_id(image_id)
                .deprecate_at(when)
                .send()
        },
    )
    .await?;
    Ok(())
}
