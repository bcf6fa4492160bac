//! The minutes from the command line: `kiroku meetings list|show|search`,
//! `kiroku export MEETING --format …`, `kiroku label add|list|rm`. Signed in with the
//! cached login or `KIROKU_API_KEY`; talks to the storage service (or a gateway, which
//! forwards it).

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use kiroku_proto::storage::v1 as pb;
use kiroku_proto::storage::v1::storage_client::StorageClient;
use tonic::transport::Channel;

use crate::audit::{authed, refused};
use crate::credentials::credential;
use crate::{InputError, runtime};

/// Where the CLI finds the storage service by default.
pub use kiroku_core::settings::DEFAULT_STORAGE_URL;

#[derive(Debug, Clone, clap::Args)]
pub struct StorageUrl {
    /// The storage service (or a gateway).
    #[arg(long, env = "KIROKU_STORAGE_URL", default_value = DEFAULT_STORAGE_URL)]
    pub storage: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum MeetingsCommand {
    /// Meetings newest first, each with its id.
    List {
        #[command(flatten)]
        url: StorageUrl,
        /// Only meetings with this tag.
        #[arg(long)]
        tag: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// A meeting's transcript and labels.
    Show {
        #[command(flatten)]
        url: StorageUrl,
        meeting: String,
    },
    /// Segments containing every word of the query (Japanese: any substring).
    Search {
        #[command(flatten)]
        url: StorageUrl,
        query: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub url: StorageUrl,
    pub meeting: String,
    /// txt, srt, vtt, json or docx.
    #[arg(long, default_value = "txt")]
    pub format: String,
    /// Write here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum LabelCommand {
    /// Tag a meeting, bookmark a moment, or add a memo on a time range.
    Add {
        #[command(flatten)]
        url: StorageUrl,
        meeting: String,
        /// A tag on the whole meeting.
        #[arg(long, conflicts_with_all = ["bookmark", "memo"])]
        tag: Option<String>,
        /// A bookmark at this time (e.g. 90s, 01:30, 01:02:03).
        #[arg(long, conflicts_with = "memo")]
        bookmark: Option<String>,
        /// A memo's text (with --from and --to).
        #[arg(long, requires_all = ["from", "to"])]
        memo: Option<String>,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        /// The bookmark's note.
        #[arg(long)]
        note: Option<String>,
    },
    List {
        #[command(flatten)]
        url: StorageUrl,
        meeting: String,
    },
    Rm {
        #[command(flatten)]
        url: StorageUrl,
        label: String,
    },
}

/// `90s`, `90`, `01:30`, `01:02:03(.5)` → milliseconds.
fn parse_time(text: &str) -> Result<u64> {
    let bad = || InputError(format!("time {text:?}: use seconds (90s) or [hh:]mm:ss"));
    let text = text.trim();
    let seconds = if let Some(s) = text.strip_suffix('s') {
        s.parse::<f64>().map_err(|_| bad())?
    } else {
        let mut total = 0.0;
        for part in text.split(':') {
            total = total * 60.0 + part.parse::<f64>().map_err(|_| bad())?;
        }
        total
    };
    if !(0.0..1e9).contains(&seconds) {
        return Err(bad().into());
    }
    Ok((seconds * 1000.0).round() as u64)
}

fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn jst(time: &Option<prost_types::Timestamp>) -> String {
    time.as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .and_then(|t| Some(t.with_timezone(&chrono::FixedOffset::east_opt(9 * 3600)?)))
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| "-".into())
}

fn kind(value: i32) -> &'static str {
    match pb::LabelKind::try_from(value) {
        Ok(pb::LabelKind::Tag) => "tag",
        Ok(pb::LabelKind::Bookmark) => "bookmark",
        Ok(pb::LabelKind::Memo) => "memo",
        _ => "?",
    }
}

fn print_label(label: &pb::Label) {
    let at = match kind(label.kind) {
        "tag" => String::new(),
        "bookmark" => format!(" [{}]", clock(label.at_ms)),
        _ => format!(" [{}–{}]", clock(label.at_ms), clock(label.end_ms)),
    };
    println!(
        "{}  {}{}  {}",
        label.label_id,
        kind(label.kind),
        at,
        label.text
    );
}

async fn client(url: &str) -> Result<StorageClient<Channel>> {
    Ok(StorageClient::new(crate::audit::connect(url).await?).max_decoding_message_size(256 << 20))
}

pub fn meetings(command: MeetingsCommand) -> Result<()> {
    runtime()?.block_on(async move {
        let cred = credential().await?;
        match command {
            MeetingsCommand::List { url, tag, limit } => {
                let mut client = client(&url.storage).await?;
                let (mut shown, mut page_token) = (0u32, String::new());
                while shown < limit {
                    let page = client
                        .list_meetings(authed(
                            pb::ListMeetingsRequest {
                                page_size: (limit - shown).min(200),
                                page_token: page_token.clone(),
                                tag: tag.clone().unwrap_or_default(),
                            },
                            &cred,
                        ))
                        .await
                        .map_err(refused)?
                        .into_inner();
                    for m in &page.meetings {
                        println!(
                            "{}  {} JST  {}  {:>4} segments  {}{}",
                            m.meeting_id,
                            jst(&m.started_at),
                            clock(m.duration_ms),
                            m.segments,
                            m.title,
                            if m.tags.is_empty() {
                                String::new()
                            } else {
                                format!("  [{}]", m.tags.join(", "))
                            }
                        );
                        shown += 1;
                    }
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    page_token = page.next_page_token;
                }
                if shown == 0 {
                    println!("no meetings");
                }
            }
            MeetingsCommand::Show { url, meeting } => {
                let meeting = client(&url.storage)
                    .await?
                    .get_meeting(authed(
                        pb::GetMeetingRequest {
                            meeting_id: meeting,
                        },
                        &cred,
                    ))
                    .await
                    .map_err(refused)?
                    .into_inner();
                if let Some(m) = &meeting.summary {
                    println!(
                        "{} ({})  started {} JST  {}  language {}",
                        m.title,
                        m.meeting_id,
                        jst(&m.started_at),
                        clock(m.duration_ms),
                        if m.language.is_empty() {
                            "-"
                        } else {
                            &m.language
                        }
                    );
                }
                for segment in &meeting.segments {
                    println!("[{}] {}", clock(segment.start_ms), segment.text.trim());
                }
                for label in &meeting.labels {
                    print_label(label);
                }
            }
            MeetingsCommand::Search { url, query, limit } => {
                let hits = client(&url.storage)
                    .await?
                    .search(authed(pb::SearchRequest { query, limit }, &cred))
                    .await
                    .map_err(refused)?
                    .into_inner()
                    .hits;
                for hit in &hits {
                    if let Some(segment) = &hit.segment {
                        println!(
                            "{}  [{}]  {}",
                            hit.meeting_id,
                            clock(segment.start_ms),
                            segment.text.trim()
                        );
                    }
                }
                if hits.is_empty() {
                    println!("no matches");
                }
            }
        }
        Ok(())
    })
}

pub fn export(args: ExportArgs) -> Result<()> {
    let format = match args.format.as_str() {
        "txt" => pb::ExportFormat::Txt,
        "srt" => pb::ExportFormat::Srt,
        "vtt" => pb::ExportFormat::Vtt,
        "json" => pb::ExportFormat::Json,
        "docx" => pb::ExportFormat::Docx,
        other => {
            return Err(
                InputError(format!("format {other:?}: use txt, srt, vtt, json or docx")).into(),
            );
        }
    };
    if format == pb::ExportFormat::Docx && args.out.is_none() && std::io::stdout().is_terminal() {
        return Err(
            InputError("a .docx is binary: give --out FILE or redirect stdout".into()).into(),
        );
    }
    runtime()?.block_on(async move {
        let cred = credential().await?;
        let export = client(&args.url.storage)
            .await?
            .export_meeting(authed(
                pb::ExportMeetingRequest {
                    meeting_id: args.meeting,
                    format: format as i32,
                },
                &cred,
            ))
            .await
            .map_err(refused)?
            .into_inner();
        match args.out {
            Some(path) => {
                std::fs::write(&path, &export.data)
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("{} bytes written to {}", export.data.len(), path.display());
            }
            None => std::io::stdout().write_all(&export.data)?,
        }
        Ok(())
    })
}

pub fn label(command: LabelCommand) -> Result<()> {
    runtime()?.block_on(async move {
        let cred = credential().await?;
        match command {
            LabelCommand::Add {
                url,
                meeting,
                tag,
                bookmark,
                memo,
                from,
                to,
                note,
            } => {
                let request = match (tag, bookmark, memo) {
                    (Some(tag), None, None) => pb::AddLabelRequest {
                        meeting_id: meeting,
                        kind: pb::LabelKind::Tag as i32,
                        text: tag,
                        ..Default::default()
                    },
                    (None, Some(at), None) => pb::AddLabelRequest {
                        meeting_id: meeting,
                        kind: pb::LabelKind::Bookmark as i32,
                        text: note.unwrap_or_default(),
                        at_ms: parse_time(&at)?,
                        ..Default::default()
                    },
                    (None, None, Some(text)) => pb::AddLabelRequest {
                        meeting_id: meeting,
                        kind: pb::LabelKind::Memo as i32,
                        text,
                        at_ms: parse_time(from.as_deref().unwrap_or("0"))?,
                        end_ms: parse_time(to.as_deref().unwrap_or("0"))?,
                        ..Default::default()
                    },
                    _ => {
                        return Err(InputError(
                            "give one of --tag TEXT, --bookmark TIME or --memo TEXT --from T --to T"
                                .into(),
                        )
                        .into());
                    }
                };
                let label = client(&url.storage)
                    .await?
                    .add_label(authed(request, &cred))
                    .await
                    .map_err(refused)?
                    .into_inner();
                print_label(&label);
            }
            LabelCommand::List { url, meeting } => {
                let labels = client(&url.storage)
                    .await?
                    .list_labels(authed(
                        pb::ListLabelsRequest {
                            meeting_id: meeting,
                        },
                        &cred,
                    ))
                    .await
                    .map_err(refused)?
                    .into_inner()
                    .labels;
                for label in &labels {
                    print_label(label);
                }
                if labels.is_empty() {
                    println!("no labels");
                }
            }
            LabelCommand::Rm { url, label } => {
                client(&url.storage)
                    .await?
                    .remove_label(authed(
                        pb::RemoveLabelRequest {
                            label_id: label.clone(),
                        },
                        &cred,
                    ))
                    .await
                    .map_err(refused)?;
                println!("label {label} removed");
            }
        }
        Ok(())
    })
}

/// `kiroku admin tenant export --out DIR`: the storage bundle, written file by file and
/// checked against its manifest, then the tenant's audit log (`audit/log.json`) added to
/// the bundle and its manifest.
pub fn tenant_export(url: StorageUrl, audit: crate::audit::AuditUrl, out: PathBuf) -> Result<()> {
    use kiroku_storage::bundle;
    if out.exists()
        && std::fs::read_dir(&out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(InputError(format!(
            "{} exists and is not empty: export into a new directory",
            out.display()
        ))
        .into());
    }
    let write = |path: &str, data: &[u8]| -> Result<()> {
        // Paths come from the server: only plain relative names are written.
        if !bundle::safe_path(path) {
            anyhow::bail!("the bundle holds an unsafe path {path:?}");
        }
        let path = out.join(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))
    };
    let out = &out;
    runtime()?.block_on(async move {
        use futures::StreamExt as _;
        let cred = credential().await?;
        let mut files = client(&url.storage)
            .await?
            .export_tenant(authed(pb::ExportTenantRequest {}, &cred))
            .await
            .map_err(refused)?
            .into_inner();
        let mut received = Vec::new();
        let mut manifest = None;
        while let Some(file) = files.next().await {
            let file = file.map_err(refused)?;
            if file.path == bundle::MANIFEST {
                manifest = Some(bundle::Manifest::parse(&file.data)?);
                continue;
            }
            write(&file.path, &file.data)?;
            received.push(bundle::ManifestFile::of(&file.path, &file.data));
            eprint!("\r{} files", received.len());
        }
        eprintln!();
        let mut manifest = manifest.context("the storage service sent no manifest")?;
        let mut checker = bundle::Checker::new(&manifest);
        for file in &received {
            let listed = manifest.files.iter().find(|f| f.path == file.path);
            if listed != Some(file) {
                anyhow::bail!("{}: size or SHA-256 differs from the manifest", file.path);
            }
            checker.check(&file.path, &std::fs::read(out.join(&file.path))?)?;
        }
        checker.finish()?;
        let log = crate::audit::export_all(&audit.audit, &cred).await?;
        write(bundle::AUDIT_LOG, &log.data)?;
        manifest
            .files
            .push(bundle::ManifestFile::of(bundle::AUDIT_LOG, &log.data));
        write(bundle::MANIFEST, &serde_json::to_vec_pretty(&manifest)?)?;
        println!(
            "{} meetings and {} audit entries exported to {} ({} files, SHA-256 verified)",
            manifest.meetings,
            log.entries,
            out.display(),
            manifest.files.len() + 1
        );
        Ok(())
    })
}

/// `kiroku admin tenant import DIR`: every file checked against the manifest here, then
/// sent (manifest first) to be imported into the caller's tenant, all or nothing.
pub fn tenant_import(url: StorageUrl, dir: PathBuf) -> Result<()> {
    use kiroku_storage::bundle;
    let manifest_data = std::fs::read(dir.join(bundle::MANIFEST)).map_err(|e| {
        InputError(format!(
            "{}: {e} (not a bundle written by `kiroku admin tenant export`?)",
            dir.join(bundle::MANIFEST).display()
        ))
    })?;
    let manifest =
        bundle::Manifest::parse(&manifest_data).map_err(|e| InputError(e.to_string()))?;
    let mut checker = bundle::Checker::new(&manifest);
    for file in &manifest.files {
        let data = std::fs::read(dir.join(&file.path))
            .map_err(|e| InputError(format!("{}: {e}", file.path)))?;
        checker
            .check(&file.path, &data)
            .map_err(|e| InputError(e.to_string()))?;
    }
    checker.finish().map_err(|e| InputError(e.to_string()))?;
    let total = manifest.files.len();
    runtime()?.block_on(async move {
        use futures::StreamExt as _;
        let cred = credential().await?;
        let first = futures::stream::once(async move {
            pb::BundleFile {
                path: bundle::MANIFEST.into(),
                data: manifest_data,
            }
        });
        // Checked above; a file that changes on disk meanwhile fails on the server.
        let rest =
            futures::stream::iter(manifest.files.into_iter().enumerate()).map(move |(n, file)| {
                eprint!("\r{}/{total} files", n + 1);
                pb::BundleFile {
                    data: std::fs::read(dir.join(&file.path)).unwrap_or_default(),
                    path: file.path,
                }
            });
        let imported = client(&url.storage)
            .await?
            .max_encoding_message_size(kiroku_storage::MAX_BUNDLE_FILE_BYTES)
            .import_tenant(authed(first.chain(rest), &cred))
            .await
            .map_err(refused)?
            .into_inner();
        eprintln!();
        println!(
            "imported {} meetings, {} segments, {} labels ({} files checked)",
            imported.meetings, imported.segments, imported.labels, imported.files
        );
        Ok(())
    })
}

/// `kiroku admin tenant erase --confirm SLUG`.
pub fn tenant_erase(url: StorageUrl, confirm: String) -> Result<()> {
    runtime()?.block_on(async move {
        let cred = credential().await?;
        let erased = client(&url.storage)
            .await?
            .erase_tenant(authed(
                pb::EraseTenantRequest {
                    confirm_tenant_slug: confirm,
                },
                &cred,
            ))
            .await
            .map_err(refused)?
            .into_inner();
        println!(
            "data key destroyed; erased {} meetings, {} segments, {} labels; purged {} messages from JetStream",
            erased.meetings, erased.segments, erased.labels, erased.stream_messages
        );
        Ok(())
    })
}

#[derive(Debug, clap::Subcommand)]
pub enum StorageAdminCommand {
    /// Re-wrap every tenant's data key under the current master key (run after deploying
    /// a new KIROKU_MASTER_KEY with the old one as KIROKU_PREVIOUS_MASTER_KEY).
    RotateMasterKey(StorageUrl),
}

pub fn storage_admin(command: StorageAdminCommand) -> Result<()> {
    let StorageAdminCommand::RotateMasterKey(url) = command;
    let credential = crate::notice::operator_credential()?;
    runtime()?.block_on(async move {
        let result = client(&url.storage)
            .await?
            .rotate_master_key(authed(pb::RotateMasterKeyRequest {}, &credential))
            .await
            .map_err(refused)?
            .into_inner();
        println!(
            "{} data keys re-wrapped under master key {}",
            result.rewrapped, result.master_key_id
        );
        if result.failed > 0 {
            anyhow::bail!(
                "{} data keys open with neither the current nor the previous master key: keep the previous key configured and investigate",
                result.failed
            );
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_the_usual_forms() {
        assert_eq!(parse_time("90s").expect("s"), 90_000);
        assert_eq!(parse_time("01:30").expect("mm:ss"), 90_000);
        assert_eq!(parse_time("1:02:03.5").expect("h:mm:ss"), 3_723_500);
        assert_eq!(parse_time("42").expect("seconds"), 42_000);
        assert!(parse_time("soon").is_err());
        assert!(parse_time("-5s").is_err());
    }
}
