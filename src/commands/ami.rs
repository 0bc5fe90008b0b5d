//! `imgforge ami list|prune|promote`: the command line only; the jobs are in
//! [`imgforge::aws::publish`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use imgforge::aws::ami::names::{
    FAMILY_TAG, REGIONS_TAG, family_of, parse_ami_name, parse_region, parse_ssm_template,
    parse_tag, render_ssm_name,
};
use imgforge::aws::client::{self, Clients};
use imgforge::aws::iam;
use imgforge::aws::publish::list::{self, ImageInfo};
use imgforge::aws::publish::prune::{self, PruneRequest};
use imgforge::aws::publish::{self as publish_jobs, ssm};
use imgforge::units::parse_duration;

use super::BadInput;
use super::aws_options::ServiceOptions;

#[derive(Debug, Args)]
pub struct AmiArgs {
    #[command(subcommand)]
    pub command: AmiCommand,
}

#[derive(Debug, Subcommand)]
pub enum AmiCommand {
    /// List this account's AMIs of a family (or by name prefix): snapshots, region,
    /// state, creation and deprecation times.
    List(ListArgs),
    /// Deregister the older AMIs of a family (or name prefix) and delete their
    /// snapshots, never one that production launches from (a dry run unless --yes).
    Prune(PruneArgs),
    /// Point an SSM parameter at another AMI (roll forward or back), per region.
    Promote(PromoteArgs),
}

/// Regions and how to reach AWS, for commands that work in several regions.
#[derive(Debug, Args)]
pub struct Regions {
    /// A region to work in; repeat for more. Default: the SDK chain's region
    /// (AWS_REGION, the profile). Packer: region / ami_regions.
    #[arg(long = "region", value_name = "REGION", value_parser = parse_region)]
    pub regions: Vec<String>,
    #[command(flatten)]
    pub service: ServiceOptions,
    /// Print the IAM policy document (least privilege) this command with these flags
    /// needs, in the regions it touches, and exit: no AWS call. (A --family without
    /// --region finds its regions at run time: the policy then says `*`.)
    #[arg(long)]
    pub print_iam_policy: bool,
}

impl Regions {
    /// Clients for each region, after checking that EC2 knows them.
    async fn clients(&self) -> anyhow::Result<Vec<Clients>> {
        // Regions are checked from the default region (a made-up region has no
        // endpoint to ask); without one, from the first region given.
        let connection = self.service.to_connection(None)?;
        let base = match client::connect(&connection).await {
            Err(client::ClientError::NoRegion) if !self.regions.is_empty() => {
                client::connect(&connection.in_region(self.regions.first().cloned())).await?
            }
            other => other?,
        };
        publish_jobs::check_regions(&base, &self.regions).await?;
        if self.regions.is_empty() {
            return Ok(vec![base]);
        }
        Ok(self.regions.iter().map(|r| base.for_region(r)).collect())
    }

    /// As [`Self::clients`]; without --region, a family is looked for in
    /// the default region and every region its AMIs were copied to (their
    /// imgforge:regions tags).
    async fn clients_for(&self, family: Option<&str>) -> anyhow::Result<Vec<Clients>> {
        let mut clients = self.clients().await?;
        let Some(family) = family.filter(|_| self.regions.is_empty()) else {
            return Ok(clients);
        };
        let base = clients[0].clone();
        let tag = [(FAMILY_TAG.to_string(), family.to_string())];
        let mut regions: Vec<String> = Vec::new();
        for image in list::owned(&base, "", false, &tag).await? {
            for region in image
                .tags
                .get(REGIONS_TAG)
                .into_iter()
                .flat_map(|r| r.split(','))
            {
                if region != base.region && !regions.iter().any(|r| r == region) {
                    regions.push(region.to_string());
                }
            }
        }
        regions.sort();
        clients.extend(regions.iter().map(|r| base.for_region(r)));
        Ok(clients)
    }
}

/// Which AMIs: a family (its imgforge:family tag) or a name prefix.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("selection").required(true).multiple(true)
    .args(["family", "name_prefix"])))]
pub struct Selection {
    /// The AMIs of this image family (tagged imgforge:family by upload --family):
    /// `trading-large` never matches `trading-large-arm64`. Without --region, every
    /// region the family was copied to.
    #[arg(long, value_name = "FAMILY")]
    pub family: Option<String>,
    /// AMIs whose name starts with this (a plain prefix: `trading-large-` also
    /// matches `trading-large-arm64-...`; prefer --family).
    #[arg(long, value_name = "PREFIX")]
    pub name_prefix: Option<String>,
}

impl Selection {
    fn prefix(&self) -> &str {
        self.name_prefix.as_deref().unwrap_or_default()
    }

    /// The tags to match: --tag, and the family's.
    fn tags(&self, tags: &[(String, String)]) -> Vec<(String, String)> {
        let mut all = tags.to_vec();
        if let Some(family) = &self.family {
            all.push((FAMILY_TAG.to_string(), family.clone()));
        }
        all
    }

    fn describe(&self) -> String {
        match (&self.family, &self.name_prefix) {
            (Some(f), Some(p)) => format!("of family {f} named {p}*"),
            (Some(f), None) => format!("of family {f}"),
            (None, p) => format!("named {}*", p.as_deref().unwrap_or_default()),
        }
    }
}

/// `--keep`: at least 1.
fn parse_keep(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("--keep 0 would deregister every AMI of the family; keep at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "{text:?} is not a number of AMIs to keep (1 or more)"
        )),
    }
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// Only AMIs with this tag; repeat for more (all must match).
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    #[command(flatten)]
    pub regions: Regions,
    /// Print JSON (an array of AMIs) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Never deregistered, and not counted in --keep: an AMI that an SSM parameter of \
data type aws:ec2:image names, one with deregistration protection, one a launch template's \
default or latest version uses.\n\nExamples:\n  imgforge ami prune --family trading-large --keep 3\n  \
imgforge ami prune --family trading-large --keep 3 --older-than 30d --region eu-west-1 --yes"
)]
pub struct PruneArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// How many of the newest AMIs not in use to keep in each region (at least 1).
    #[arg(long, value_name = "N", value_parser = parse_keep)]
    pub keep: usize,
    /// Prune only AMIs older than this (e.g. 30d); the newest --keep stay regardless.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub older_than: Option<Duration>,
    /// Only AMIs with this tag; repeat for more.
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    #[command(flatten)]
    pub regions: Regions,
    /// Really deregister and delete (without it: a dry run that lists what would go).
    #[arg(long)]
    pub yes: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).multiple(true)
    .args(["ami", "name", "family"])))]
pub struct PromoteArgs {
    /// The SSM parameter ({name} and {region} placeholders allowed).
    #[arg(long, value_name = "NAME", value_parser = parse_ssm_template)]
    pub ssm_parameter: String,
    /// The AMI to point at (one region: its id is regional).
    #[arg(long, alias = "image", value_name = "AMI_ID", conflicts_with = "name")]
    pub ami: Option<String>,
    /// The AMI to point at, by name, in each region.
    #[arg(long, value_name = "AMI_NAME", value_parser = parse_ami_name)]
    pub name: Option<String>,
    /// The newest AMI of this family (its imgforge:family tag), in each region; with
    /// --ami or --name, the AMI must be of this family.
    #[arg(long, value_name = "FAMILY")]
    pub family: Option<String>,
    /// Point it even when it names an AMI of another image family.
    #[arg(long)]
    pub ssm_overwrite: bool,
    #[command(flatten)]
    pub regions: Regions,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &AmiArgs) -> anyhow::Result<()> {
    if let Some(policy) = iam_policy(&args.command) {
        println!("{}", serde_json::to_string_pretty(&policy)?);
        return Ok(());
    }
    let runtime = client::runtime()?;
    runtime.block_on(async {
        match &args.command {
            AmiCommand::List(a) => list_amis(a).await,
            AmiCommand::Prune(a) => prune_amis(a).await,
            AmiCommand::Promote(a) => promote(a).await,
        }
    })
}

/// The policy `--print-iam-policy` asks for, if it does.
fn iam_policy(command: &AmiCommand) -> Option<serde_json::Value> {
    let (regions, family, kind, ssm) = match command {
        AmiCommand::List(a) => (
            &a.regions,
            a.selection.family.is_some(),
            iam::AmiCommand::List,
            None,
        ),
        AmiCommand::Prune(a) => (
            &a.regions,
            a.selection.family.is_some(),
            iam::AmiCommand::Prune { execute: a.yes },
            None,
        ),
        AmiCommand::Promote(a) => (
            &a.regions,
            false,
            iam::AmiCommand::Promote,
            Some(a.ssm_parameter.as_str()),
        ),
    };
    if !regions.print_iam_policy {
        return None;
    }
    let list = if regions.regions.is_empty() {
        let default = super::aws_options::offline_region(None);
        // A family's copies are found at run time.
        vec![if family { "*".to_string() } else { default }]
    } else {
        regions.regions.clone()
    };
    Some(iam::for_ami(kind, &list, ssm))
}

fn print_image(image: &ImageInfo) {
    println!(
        "{:<14} {:<21} {:<40} {:<10} created {} deprecated {} snapshots {}",
        image.region,
        image.image_id,
        image.name,
        image.state,
        image.creation_date.as_deref().unwrap_or("-"),
        image.deprecation_time.as_deref().unwrap_or("-"),
        if image.snapshot_ids.is_empty() {
            "-".to_string()
        } else {
            image.snapshot_ids.join(",")
        }
    );
}

async fn list_amis(args: &ListArgs) -> anyhow::Result<()> {
    let mut all = Vec::new();
    let sel = &args.selection;
    let tags = sel.tags(&args.tags);
    for clients in args.regions.clients_for(sel.family.as_deref()).await? {
        all.extend(list::owned(&clients, sel.prefix(), false, &tags).await?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else if all.is_empty() {
        eprintln!("no AMI {}", sel.describe());
    } else {
        all.iter().for_each(print_image);
    }
    Ok(())
}

async fn prune_amis(args: &PruneArgs) -> anyhow::Result<()> {
    let sel = &args.selection;
    let request = PruneRequest {
        name_prefix: sel.prefix().to_string(),
        family: sel.family.clone(),
        keep: args.keep,
        older_than: args.older_than,
        tags: args.tags.clone(),
        execute: args.yes,
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    let clients = args.regions.clients_for(sel.family.as_deref()).await?;
    let mut reports = Vec::new();
    for c in &clients {
        reports.push(prune::prune_region(c, &request, now).await?);
    }
    if reports
        .iter()
        .all(|r| r.kept.is_empty() && r.pruned.is_empty() && r.in_use.is_empty())
    {
        let regions: Vec<&str> = clients.iter().map(|c| c.region.as_str()).collect();
        bail!(
            "no AMI of this account {} in {}; check --family, --name-prefix and --region",
            sel.describe(),
            regions.join(", ")
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(());
    }
    let verb = if args.yes {
        "deregistered"
    } else {
        "would deregister"
    };
    for report in &reports {
        for image in &report.kept {
            println!("{}: keep {} {}", report.region, image.image_id, image.name);
        }
        for used in &report.in_use {
            println!(
                "{}: keep {} {} (in use: {})",
                report.region, used.image.image_id, used.image.name, used.reason
            );
        }
        for text in &report.unchecked {
            eprintln!("imgforge: warning: {text}");
        }
        for item in &report.pruned {
            println!(
                "{}: {verb} {} {} (created {}); {} snapshots {}",
                report.region,
                item.image.image_id,
                item.image.name,
                item.image.creation_date.as_deref().unwrap_or("?"),
                if args.yes { "deleted" } else { "would delete" },
                if item.delete_snapshots.is_empty() {
                    "none".to_string()
                } else {
                    item.delete_snapshots.join(",")
                }
            );
            for (snap, why) in &item.keep_snapshots {
                println!("{}:   keep snapshot {snap}: {why}", report.region);
            }
        }
    }
    if !args.yes && reports.iter().any(|r| !r.pruned.is_empty()) {
        eprintln!("imgforge: dry run; pass --yes to deregister and delete");
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct Promoted {
    region: String,
    ssm_parameter: String,
    ami_id: String,
    previous_value: Option<String>,
}

async fn promote(args: &PromoteArgs) -> anyhow::Result<()> {
    super::warn_renamed_flag("--image", "--ami");
    if args.ami.is_some() && args.regions.regions.len() > 1 {
        return Err(BadInput::new(
            "--ami names an AMI in one region (AMI ids are regional); use --name to promote \
in several regions",
        )
        .into());
    }
    let family_tag: Vec<(String, String)> = args
        .family
        .iter()
        .map(|f| (FAMILY_TAG.to_string(), f.clone()))
        .collect();
    let mut done = Vec::new();
    for clients in args.regions.clients().await? {
        let region = clients.region.clone();
        let image = match (&args.ami, &args.name) {
            (Some(id), _) => list::by_id(&clients, id)
                .await?
                .with_context(|| format!("{region}: no AMI {id}"))?,
            (None, Some(name)) => {
                let mut found = list::owned(&clients, name, true, &family_tag).await?;
                if found.len() != 1 {
                    bail!(
                        "{region}: {} AMIs named {name:?}; promote needs exactly one",
                        found.len()
                    );
                }
                found.remove(0)
            }
            (None, None) => list::owned(&clients, "", false, &family_tag)
                .await?
                .pop()
                .with_context(|| {
                    format!(
                        "{region}: no AMI of family {:?}",
                        args.family.as_deref().unwrap_or_default()
                    )
                })?,
        };
        if let Some(family) = &args.family
            && image.tags.get(FAMILY_TAG) != Some(family)
        {
            bail!(
                "{region}: {} ({}) is not of family {family:?}",
                image.image_id,
                image.name
            );
        }
        let family = image
            .tags
            .get(FAMILY_TAG)
            .cloned()
            .unwrap_or_else(|| family_of(&image.name));
        let parameter = render_ssm_name(&args.ssm_parameter, &image.name, &region);
        let previous = ssm::point(
            &clients,
            &parameter,
            &image.image_id,
            &family,
            args.ssm_overwrite,
        )
        .await?;
        done.push(Promoted {
            region,
            ssm_parameter: parameter,
            ami_id: image.image_id,
            previous_value: previous,
        });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else {
        for p in &done {
            println!(
                "{}: {} -> {}{}",
                p.region,
                p.ssm_parameter,
                p.ami_id,
                p.previous_value
                    .as_ref()
                    .map(|v| format!(" (was {v})"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}
