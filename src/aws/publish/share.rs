//! Sharing in one region: launch permission on the AMI in the structured
//! form (`LaunchPermission.Add.N.UserId|Group|OrganizationArn|
//! OrganizationalUnitArn`; the flat form carries one group/org/OU only), and
//! createVolumePermission on each snapshot for account IDs, so those
//! accounts can copy the AMI. Adding a permission twice is harmless, so a
//! rerun sends it again.

use aws_sdk_ec2::types::{
    LaunchPermission, LaunchPermissionModifications, OperationType, PermissionGroup,
    SnapshotAttributeName,
};

use super::PublishError;
use crate::aws::ami::names::ShareTarget;
use crate::aws::client::Clients;
use crate::aws::retry::with_retries;

pub async fn apply(
    clients: &Clients,
    image_id: &str,
    snapshot_ids: &[String],
    targets: &[ShareTarget],
) -> Result<(), PublishError> {
    let permissions: Vec<LaunchPermission> = targets
        .iter()
        .map(|target| match target {
            ShareTarget::Account(id) => LaunchPermission::builder().user_id(id).build(),
            ShareTarget::All => LaunchPermission::builder()
                .group(PermissionGroup::All)
                .build(),
            ShareTarget::Organization(arn) => {
                LaunchPermission::builder().organization_arn(arn).build()
            }
            ShareTarget::OrganizationalUnit(arn) => LaunchPermission::builder()
                .organizational_unit_arn(arn)
                .build(),
        })
        .collect();
    let modifications = LaunchPermissionModifications::builder()
        .set_add(Some(permissions))
        .build();
    with_retries(
        &clients.retry,
        "ModifyImageAttribute",
        format_args!("ModifyImageAttribute {image_id}"),
        || {
            clients
                .ec2
                .modify_image_attribute()
                .image_id(image_id)
                .launch_permission(modifications.clone())
                .send()
        },
    )
    .await?;
    let accounts: Vec<String> = targets
        .iter()
        .filter_map(|t| match t {
            ShareTarget::Account(id) => Some(id.clone()),
            _ => None,
        })
        .collect();
    if accounts.is_empty() {
        return Ok(());
    }
    for snapshot_id in snapshot_ids {
        with_retries(
            &clients.retry,
            "ModifySnapshotAttribute",
            format_args!("ModifySnapshotAttribute {snapshot_id}"),
            || {
                clients
                    .ec2
                    .modify_snapshot_attribute()
                    .snapshot_id(snapshot_id)
                    .attribute(SnapshotAttributeName::CreateVolumePermission)
                    .operation_type(OperationType::Add)
                    .set_user_ids(Some(accounts.clone()))
                    .send()
            },
        )
        .await?;
    }
    Ok(())
}
