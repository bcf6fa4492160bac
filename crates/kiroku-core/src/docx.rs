//! Meeting minutes as a Word document (.docx, Office Open XML WordprocessingML).
//!
//! [`render`] writes a minimal but complete package that Word and LibreOffice open
//! as is:
//!
//! | part                           | what it holds                                      |
//! | ------------------------------ | -------------------------------------------------- |
//! | `[Content_Types].xml`          | the media type of every part                       |
//! | `_rels/.rels`                  | where the document and its properties are          |
//! | `docProps/core.xml`            | title (`dc:title`), creator, language              |
//! | `docProps/app.xml`             | the producing application                          |
//! | `word/document.xml`            | the minutes themselves                             |
//! | `word/styles.xml`              | `Normal`, `Title` and `Heading1`                   |
//! | `word/fontTable.xml`           | the fonts, with fallbacks for Japanese             |
//! | `word/_rels/document.xml.rels` | links from the document to styles and fonts        |
//!
//! The document reads: the title, one line with the start time and the
//! participants, a "Transcript" heading with one paragraph per spoken segment (a
//! bold `[hh:mm:ss]` then the text), and, when there are any, a "Labels" heading
//! with one paragraph per tag, bookmark or memo.
//!
//! All text that comes from callers or the engine is XML-escaped, so markup in a
//! memo stays literal text; characters XML 1.0 forbids (most C0 controls,
//! U+FFFE, U+FFFF) are dropped, as are DEL and the C1 controls, which XML 1.0
//! discourages. Spaces are kept (`xml:space="preserve"`), line breaks become
//! `<w:br/>` and tabs `<w:tab/>`. The output is deterministic: every zip entry
//! carries the same fixed timestamp (1980-01-01 00:00:00, the zip epoch) and
//! permissions, and parts are written in a fixed order, so the same minutes always
//! give the same bytes.

use std::io::{Cursor, Write as _};

use zip::result::ZipError;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

use crate::transcript::{Segment, Transcript};

/// What the minutes show besides the transcript.
#[derive(Debug, Clone, Copy)]
pub struct Minutes<'a> {
    /// Meeting title: the document's first line and its `dc:title` property.
    pub title: &'a str,
    /// When the meeting started, already rendered for people, e.g. "2026-11-26 09:00 JST".
    pub started_at: &'a str,
    /// Names of the participants, listed in this order.
    pub participants: &'a [String],
    /// What was said; segments with no text are left out.
    pub transcript: &'a Transcript,
    /// Tags, bookmarks and memos, listed at the end in this order.
    pub labels: &'a [Label<'a>],
}

/// A tag, bookmark or memo attached to the meeting, optionally to a time or a span.
#[derive(Debug, Clone, Copy)]
pub struct Label<'a> {
    /// What sort of label this is ("tag", "bookmark", "memo", ...), shown before the text.
    pub kind: &'a str,
    /// Where it points, in milliseconds from the start of the audio.
    pub at_ms: Option<u64>,
    /// Where the span it covers ends, in milliseconds from the start of the audio.
    pub end_ms: Option<u64>,
    /// The label's text, shown literally.
    pub text: &'a str,
}

/// Renders the minutes as the bytes of a .docx file.
///
/// Fails only if the zip writer does, which writing to memory does not do in practice.
pub fn render(minutes: &Minutes<'_>) -> Result<Vec<u8>, ZipError> {
    let parts: [(&str, String); 8] = [
        ("[Content_Types].xml", CONTENT_TYPES.to_owned()),
        ("_rels/.rels", PACKAGE_RELS.to_owned()),
        ("docProps/core.xml", core_properties(minutes)),
        ("docProps/app.xml", APP_PROPERTIES.to_owned()),
        ("word/document.xml", document(minutes)),
        ("word/styles.xml", STYLES.to_owned()),
        ("word/fontTable.xml", FONT_TABLE.to_owned()),
        ("word/_rels/document.xml.rels", DOCUMENT_RELS.to_owned()),
    ];
    // A fixed timestamp and mode make the archive byte-for-byte reproducible.
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .last_modified_time(DateTime::default())
        .unix_permissions(0o644);
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    for (name, xml) in parts {
        zip.start_file(name, options)?;
        zip.write_all(xml.as_bytes())?;
    }
    Ok(zip.finish()?.into_inner())
}

/// Namespace of WordprocessingML elements (`w:`).
const W_NS: &str = "http://schemas.openxmlformats.org/wordprocessingml/2006/main";

/// The XML declaration every part starts with.
const XML_DECLARATION: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n";

const CONTENT_TYPES: &str = concat!(
    "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n",
    "<Types xmlns=\"http://schemas.openxmlformats.org/package/2006/content-types\">",
    "<Default Extension=\"rels\" ContentType=\"application/vnd.openxmlformats-package.relationships+xml\"/>",
    "<Default Extension=\"xml\" ContentType=\"application/xml\"/>",
    "<Override PartName=\"/word/document.xml\" ContentType=\"application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml\"/>",
    "<Override PartName=\"/word/styles.xml\" ContentType=\"application/vnd.openxmlformats-officedocument.wordprocessingml.styles+xml\"/>",
    "<Override PartName=\"/word/fontTable.xml\" ContentType=\"application/vnd.openxmlformats-officedocument.wordprocessingml.fontTable+xml\"/>",
    "<Override PartName=\"/docProps/core.xml\" ContentType=\"application/vnd.openxmlformats-package.core-properties+xml\"/>",
    "<Override PartName=\"/docProps/app.xml\" ContentType=\"application/vnd.openxmlformats-officedocument.extended-properties+xml\"/>",
    "</Types>"
);

const PACKAGE_RELS: &str = concat!(
    "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n",
    "<Relationships xmlns=\"http://schemas.openxmlformats.org/package/2006/relationships\">",
    "<Relationship Id=\"rId1\" Type=\"http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument\" Target=\"word/document.xml\"/>",
    "<Relationship Id=\"rId2\" Type=\"http://schemas.openxmlformats.org/package/2006/relationships/metadata/core-properties\" Target=\"docProps/core.xml\"/>",
    "<Relationship Id=\"rId3\" Type=\"http://schemas.openxmlformats.org/officeDocument/2006/relationships/extended-properties\" Target=\"docProps/app.xml\"/>",
    "</Relationships>"
);

const DOCUMENT_RELS: &str = concat!(
    "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n",
    "<Relationships xmlns=\"http://schemas.openxmlformats.org/package/2006/relationships\">",
    "<Relationship Id=\"rId1\" Type=\"http://schemas.openxmlformats.org/officeDocument/2006/relationships/styles\" Target=\"styles.xml\"/>",
    "<Relationship Id=\"rId2\" Type=\"http://schemas.openxmlformats.org/officeDocument/2006/relationships/fontTable\" Target=\"fontTable.xml\"/>",
    "</Relationships>"
);

const APP_PROPERTIES: &str = concat!(
    "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n",
    "<Properties xmlns=\"http://schemas.openxmlformats.org/officeDocument/2006/extended-properties\" ",
    "xmlns:vt=\"http://schemas.openxmlformats.org/officeDocument/2006/docPropsVTypes\">",
    "<Application>Kiroku</Application>",
    "</Properties>"
);

/// Styles: defaults (11 pt, Noto Sans for Latin, Noto Sans CJK JP for Japanese),
/// `Normal`, `Title` and `Heading1`. Child elements follow the schema's order,
/// which Word enforces.
const STYLES: &str = concat!(
    "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n",
    "<w:styles xmlns:w=\"http://schemas.openxmlformats.org/wordprocessingml/2006/main\">",
    "<w:docDefaults>",
    "<w:rPrDefault><w:rPr>",
    "<w:rFonts w:ascii=\"Noto Sans\" w:hAnsi=\"Noto Sans\" w:eastAsia=\"Noto Sans CJK JP\" w:cs=\"Noto Sans\"/>",
    "<w:sz w:val=\"22\"/><w:szCs w:val=\"22\"/>",
    "<w:lang w:val=\"en-US\" w:eastAsia=\"ja-JP\" w:bidi=\"ar-SA\"/>",
    "</w:rPr></w:rPrDefault>",
    "<w:pPrDefault><w:pPr><w:spacing w:after=\"120\" w:line=\"276\" w:lineRule=\"auto\"/></w:pPr></w:pPrDefault>",
    "</w:docDefaults>",
    "<w:style w:type=\"paragraph\" w:default=\"1\" w:styleId=\"Normal\">",
    "<w:name w:val=\"Normal\"/><w:qFormat/>",
    "</w:style>",
    "<w:style w:type=\"character\" w:default=\"1\" w:styleId=\"DefaultParagraphFont\">",
    "<w:name w:val=\"Default Paragraph Font\"/><w:uiPriority w:val=\"1\"/><w:semiHidden/><w:unhideWhenUsed/>",
    "</w:style>",
    "<w:style w:type=\"paragraph\" w:styleId=\"Title\">",
    "<w:name w:val=\"Title\"/><w:basedOn w:val=\"Normal\"/><w:next w:val=\"Normal\"/><w:uiPriority w:val=\"10\"/><w:qFormat/>",
    "<w:pPr><w:spacing w:after=\"240\" w:line=\"240\" w:lineRule=\"auto\"/><w:outlineLvl w:val=\"9\"/></w:pPr>",
    "<w:rPr><w:b/><w:bCs/><w:kern w:val=\"28\"/><w:sz w:val=\"48\"/><w:szCs w:val=\"48\"/></w:rPr>",
    "</w:style>",
    "<w:style w:type=\"paragraph\" w:styleId=\"Heading1\">",
    "<w:name w:val=\"heading 1\"/><w:basedOn w:val=\"Normal\"/><w:next w:val=\"Normal\"/><w:uiPriority w:val=\"9\"/><w:qFormat/>",
    "<w:pPr><w:keepNext/><w:keepLines/><w:spacing w:before=\"360\" w:after=\"120\"/><w:outlineLvl w:val=\"0\"/></w:pPr>",
    "<w:rPr><w:b/><w:bCs/><w:sz w:val=\"32\"/><w:szCs w:val=\"32\"/></w:rPr>",
    "</w:style>",
    "</w:styles>"
);

/// The fonts the styles name, each with a widely installed alternative that Word may
/// use when the font itself is missing (as on a stock Windows machine).
const FONT_TABLE: &str = concat!(
    "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n",
    "<w:fonts xmlns:w=\"http://schemas.openxmlformats.org/wordprocessingml/2006/main\">",
    "<w:font w:name=\"Noto Sans\">",
    "<w:altName w:val=\"Arial\"/><w:charset w:val=\"00\"/><w:family w:val=\"swiss\"/><w:pitch w:val=\"variable\"/>",
    "</w:font>",
    "<w:font w:name=\"Noto Sans CJK JP\">",
    "<w:altName w:val=\"MS Gothic\"/><w:charset w:val=\"80\"/><w:family w:val=\"swiss\"/><w:pitch w:val=\"variable\"/>",
    "</w:font>",
    "</w:fonts>"
);

/// `docProps/core.xml`: the title, the producer and, when known, the language.
fn core_properties(minutes: &Minutes<'_>) -> String {
    let mut xml = String::from(XML_DECLARATION);
    xml.push_str(concat!(
        "<cp:coreProperties ",
        "xmlns:cp=\"http://schemas.openxmlformats.org/package/2006/metadata/core-properties\" ",
        "xmlns:dc=\"http://purl.org/dc/elements/1.1/\" ",
        "xmlns:dcterms=\"http://purl.org/dc/terms/\" ",
        "xmlns:dcmitype=\"http://purl.org/dc/dcmitype/\" ",
        "xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">",
        "<dc:title>"
    ));
    push_escaped(&mut xml, minutes.title);
    xml.push_str("</dc:title><dc:creator>Kiroku</dc:creator>");
    let language = minutes.transcript.language.trim();
    if !language.is_empty() {
        xml.push_str("<dc:language>");
        push_escaped(&mut xml, language);
        xml.push_str("</dc:language>");
    }
    xml.push_str("</cp:coreProperties>");
    xml
}

/// `word/document.xml`: the minutes, followed by an A4 page setup.
fn document(minutes: &Minutes<'_>) -> String {
    let mut xml = String::from(XML_DECLARATION);
    xml.push_str("<w:document xmlns:w=\"");
    xml.push_str(W_NS);
    xml.push_str("\"><w:body>");

    paragraph(&mut xml, Some("Title"), &[Run::plain(minutes.title)]);

    let participants = minutes.participants.join(", ");
    let mut runs = vec![Run::bold("Started: "), Run::plain(minutes.started_at)];
    if !minutes.participants.is_empty() {
        runs.push(Run::plain("    "));
        runs.push(Run::bold("Participants: "));
        runs.push(Run::plain(&participants));
    }
    paragraph(&mut xml, None, &runs);

    paragraph(&mut xml, Some("Heading1"), &[Run::plain("Transcript")]);
    let mut spoken = minutes
        .transcript
        .segments
        .iter()
        .filter(|s| !s.text.trim().is_empty())
        .peekable();
    if spoken.peek().is_none() {
        paragraph(&mut xml, None, &[Run::italic("(no speech)")]);
    }
    for segment in spoken {
        segment_paragraph(&mut xml, segment);
    }

    if !minutes.labels.is_empty() {
        paragraph(&mut xml, Some("Heading1"), &[Run::plain("Labels")]);
        for label in minutes.labels {
            label_paragraph(&mut xml, label);
        }
    }

    xml.push_str(concat!(
        "<w:sectPr>",
        "<w:pgSz w:w=\"11906\" w:h=\"16838\"/>",
        "<w:pgMar w:top=\"1440\" w:right=\"1440\" w:bottom=\"1440\" w:left=\"1440\" ",
        "w:header=\"708\" w:footer=\"708\" w:gutter=\"0\"/>",
        "</w:sectPr>",
        "</w:body></w:document>"
    ));
    xml
}

/// One segment: `[hh:mm:ss]` in bold, a space, then the text without the edge
/// whitespace Whisper leaves (spaces inside are kept).
fn segment_paragraph(xml: &mut String, segment: &Segment) {
    let stamp = format!("[{}] ", clock(segment.start_ms));
    paragraph(
        xml,
        None,
        &[Run::bold(&stamp), Run::plain(segment.text.trim())],
    );
}

/// One label: its time or span in bold when it has one, its kind in italics, its text.
fn label_paragraph(xml: &mut String, label: &Label<'_>) {
    let stamp = match (label.at_ms, label.end_ms) {
        (Some(at), Some(end)) => format!("[{}\u{2013}{}] ", clock(at), clock(end)),
        (Some(at), None) => format!("[{}] ", clock(at)),
        (None, Some(end)) => format!("[until {}] ", clock(end)),
        (None, None) => String::new(),
    };
    let kind = if label.kind.trim().is_empty() {
        String::new()
    } else {
        format!("{}: ", label.kind.trim())
    };
    paragraph(
        xml,
        None,
        &[
            Run::bold(&stamp),
            Run::italic(&kind),
            Run::plain(label.text),
        ],
    );
}

/// Milliseconds as `hh:mm:ss` (hours grow past two digits if they must).
fn clock(ms: u64) -> String {
    let seconds = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// A stretch of text with one formatting.
struct Run<'t> {
    text: &'t str,
    bold: bool,
    italic: bool,
}

impl<'t> Run<'t> {
    fn plain(text: &'t str) -> Self {
        Self {
            text,
            bold: false,
            italic: false,
        }
    }

    fn bold(text: &'t str) -> Self {
        Self {
            bold: true,
            ..Self::plain(text)
        }
    }

    fn italic(text: &'t str) -> Self {
        Self {
            italic: true,
            ..Self::plain(text)
        }
    }
}

/// Appends a paragraph (`<w:p>`) with an optional style and the given runs; runs
/// left empty once forbidden characters are dropped are skipped.
fn paragraph(xml: &mut String, style: Option<&str>, runs: &[Run<'_>]) {
    xml.push_str("<w:p>");
    if let Some(style) = style {
        xml.push_str("<w:pPr><w:pStyle w:val=\"");
        push_escaped(xml, style);
        xml.push_str("\"/></w:pPr>");
    }
    for run in runs {
        let content = run_content(run.text);
        if content.is_empty() {
            continue;
        }
        xml.push_str("<w:r>");
        if run.bold || run.italic {
            xml.push_str("<w:rPr>");
            if run.bold {
                xml.push_str("<w:b/><w:bCs/>");
            }
            if run.italic {
                xml.push_str("<w:i/><w:iCs/>");
            }
            xml.push_str("</w:rPr>");
        }
        xml.push_str(&content);
        xml.push_str("</w:r>");
    }
    xml.push_str("</w:p>");
}

/// The inside of a run: text in `<w:t xml:space="preserve">`, line breaks (`\n`,
/// `\r\n` or a lone `\r`) as `<w:br/>`, tabs as `<w:tab/>`. Empty for text that has
/// nothing left once forbidden characters are dropped.
fn run_content(text: &str) -> String {
    let mut out = String::new();
    let mut pending = String::new();
    let flush = |out: &mut String, pending: &mut String| {
        if !pending.is_empty() {
            out.push_str("<w:t xml:space=\"preserve\">");
            push_escaped(out, pending);
            out.push_str("</w:t>");
            pending.clear();
        }
    };
    let mut chars = text.chars().filter(|&c| is_allowed_char(c)).peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' | '\n' => {
                if c == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                }
                flush(&mut out, &mut pending);
                out.push_str("<w:br/>");
            }
            '\t' => {
                flush(&mut out, &mut pending);
                out.push_str("<w:tab/>");
            }
            c => pending.push(c),
        }
    }
    flush(&mut out, &mut pending);
    out
}

/// Appends `text` as XML character data (also safe inside a quoted attribute):
/// markup characters become entities and forbidden characters are dropped.
fn push_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if is_allowed_char(c) => out.push(c),
            _ => {}
        }
    }
}

/// Whether `c` may appear in the document: XML 1.0's `Char` production (tab, line
/// feed, carriage return, U+0020..=U+D7FF, U+E000..=U+FFFD, U+10000 and above; Rust
/// chars are never surrogates) less DEL and the C1 controls, which XML 1.0
/// discourages and no meeting text needs.
fn is_allowed_char(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n'
            | '\r'
            | '\u{20}'..='\u{7E}'
            | '\u{A0}'..='\u{D7FF}'
            | '\u{E000}'..='\u{FFFD}'
            | '\u{10000}'..
    )
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::transcript::Word;

    const TITLE: &str = "Quarterly budget review 予算会議";
    const MEMO: &str = "<script>alert(1)</script>";
    const ENGLISH: &str = "Let us look at the travel budget first.";
    const JAPANESE: &str = "来期の予算について話し合いましょう。";

    fn transcript() -> Transcript {
        Transcript {
            duration_ms: 3_725_500,
            text: format!("{ENGLISH} {JAPANESE}"),
            language: "ja".into(),
            segments: vec![
                Segment {
                    start_ms: 1_200,
                    end_ms: 4_000,
                    text: format!(" {ENGLISH}"),
                    words: vec![Word {
                        text: "Let".into(),
                        start_ms: 1_200,
                        end_ms: 1_400,
                        probability: 0.9,
                    }],
                },
                Segment {
                    start_ms: 4_000,
                    end_ms: 4_500,
                    text: "   ".into(),
                    words: vec![],
                },
                Segment {
                    start_ms: 3_723_000,
                    end_ms: 3_725_000,
                    text: JAPANESE.into(),
                    words: vec![],
                },
            ],
        }
    }

    fn participants() -> Vec<String> {
        vec!["Sato".into(), "鈴木".into(), "Alice & Bob".into()]
    }

    fn labels() -> Vec<Label<'static>> {
        vec![
            Label {
                kind: "bookmark",
                at_ms: Some(61_000),
                end_ms: Some(125_000),
                text: "travel  budget",
            },
            Label {
                kind: "memo",
                at_ms: None,
                end_ms: None,
                text: MEMO,
            },
            Label {
                kind: "tag",
                at_ms: Some(3_723_000),
                end_ms: None,
                text: "action item\nsecond line",
            },
        ]
    }

    /// Renders the sample minutes with the given title.
    fn render_sample(title: &str) -> Vec<u8> {
        let transcript = transcript();
        let participants = participants();
        let labels = labels();
        render(&Minutes {
            title,
            started_at: "2026-11-26 09:00 JST",
            participants: &participants,
            transcript: &transcript,
            labels: &labels,
        })
        .expect("render")
    }

    /// The text of one part of a .docx.
    fn part(docx: &[u8], name: &str) -> String {
        let mut archive = zip::ZipArchive::new(Cursor::new(docx)).expect("a zip");
        let mut file = archive.by_name(name).expect(name);
        let mut text = String::new();
        file.read_to_string(&mut text).expect("utf-8 part");
        text
    }

    #[test]
    fn package_has_the_required_parts_and_escapes_markup() {
        let docx = render_sample(TITLE);
        let archive = zip::ZipArchive::new(Cursor::new(&docx)).expect("a zip");
        let names: Vec<&str> = archive.file_names().collect();
        for required in [
            "[Content_Types].xml",
            "_rels/.rels",
            "docProps/core.xml",
            "word/document.xml",
            "word/styles.xml",
            "word/_rels/document.xml.rels",
        ] {
            assert!(names.contains(&required), "{required} missing: {names:?}");
        }
        // Every override names a part that exists, and every relationship target too.
        let types = part(&docx, "[Content_Types].xml");
        for name in &names {
            if !name.ends_with(".rels") && *name != "[Content_Types].xml" {
                assert!(types.contains(&format!("PartName=\"/{name}\"")), "{name}");
            }
        }
        assert!(part(&docx, "_rels/.rels").contains("Target=\"word/document.xml\""));
        assert!(part(&docx, "word/_rels/document.xml.rels").contains("Target=\"styles.xml\""));

        let styles = part(&docx, "word/styles.xml");
        for id in ["Normal", "Title", "Heading1"] {
            assert!(styles.contains(&format!("w:styleId=\"{id}\"")), "{id}");
        }
        assert!(styles.contains("w:eastAsia=\"Noto Sans CJK JP\""));
        assert!(
            part(&docx, "docProps/core.xml").contains(&format!("<dc:title>{TITLE}</dc:title>"))
        );

        let document = part(&docx, "word/document.xml");
        assert!(document.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!document.contains("<script"));
        assert!(document.contains("Alice &amp; Bob"));
        assert!(document.contains("<w:pStyle w:val=\"Title\"/>"));
        assert!(document.contains(
            "<w:pStyle w:val=\"Heading1\"/></w:pPr><w:r><w:t xml:space=\"preserve\">Transcript<"
        ));
        assert!(document.contains("<w:t xml:space=\"preserve\">Labels</w:t>"));
        assert!(document.contains("2026-11-26 09:00 JST"));
        // Bold timestamp, then the trimmed text; the blank segment is left out.
        assert!(document.contains(&format!(
            "<w:r><w:rPr><w:b/><w:bCs/></w:rPr><w:t xml:space=\"preserve\">[00:00:01] </w:t></w:r>\
             <w:r><w:t xml:space=\"preserve\">{ENGLISH}</w:t></w:r>"
        )));
        assert!(document.contains("[01:02:03] "));
        assert_eq!(
            document
                .matches("<w:b/><w:bCs/></w:rPr><w:t xml:space=\"preserve\">[0")
                .count(),
            4
        );
        // Label times, the double space kept, the newline as a break.
        assert!(document.contains("[00:01:01\u{2013}00:02:05] "));
        assert!(document.contains(">travel  budget<"));
        assert!(
            document.contains(">action item</w:t><w:br/><w:t xml:space=\"preserve\">second line<")
        );
    }

    #[test]
    fn japanese_text_round_trips() {
        let docx = render_sample(TITLE);
        let document = part(&docx, "word/document.xml");
        assert!(document.contains(JAPANESE));
        assert!(document.contains("予算会議"));
        assert!(document.contains("鈴木"));
        assert!(part(&docx, "docProps/core.xml").contains("<dc:language>ja</dc:language>"));
    }

    #[test]
    fn characters_xml_forbids_are_dropped() {
        let dirty = "Bu\u{0}dg\u{1}e\u{8}t\u{B}\u{C}\u{1B}[0m \u{7F}\u{85}re\u{FFFE}vi\u{FFFF}ew";
        let docx = render_sample(dirty);
        for name in ["word/document.xml", "docProps/core.xml"] {
            let xml = part(&docx, name);
            assert!(xml.contains("Budget[0m review"), "{name}: {xml}");
            assert!(
                !xml.chars().any(|c| !is_allowed_char(c)),
                "{name} has a forbidden character"
            );
        }
        assert_eq!(run_content("\u{0}\u{1F}"), "", "nothing left, no empty w:t");
        assert_eq!(
            run_content("a\tb\r\nc\rd"),
            "<w:t xml:space=\"preserve\">a</w:t><w:tab/><w:t xml:space=\"preserve\">b</w:t>\
             <w:br/><w:t xml:space=\"preserve\">c</w:t><w:br/><w:t xml:space=\"preserve\">d</w:t>"
        );
    }

    #[test]
    fn same_minutes_give_the_same_bytes() {
        let first = render_sample(TITLE);
        assert_eq!(first, render_sample(TITLE));
        assert_ne!(first, render_sample("Another meeting"));
        // Not today's date: the zip epoch, on every entry.
        let mut archive = zip::ZipArchive::new(Cursor::new(&first)).expect("a zip");
        for index in 0..archive.len() {
            let entry = archive.by_index(index).expect("entry");
            assert_eq!(
                entry.last_modified(),
                Some(DateTime::default()),
                "{}",
                entry.name()
            );
            assert_eq!(entry.unix_mode(), Some(0o100644), "{}", entry.name());
        }
    }

    #[test]
    fn empty_minutes_still_render() {
        let transcript = Transcript {
            duration_ms: 0,
            text: String::new(),
            language: String::new(),
            segments: vec![],
        };
        let docx = render(&Minutes {
            title: "",
            started_at: "",
            participants: &[],
            transcript: &transcript,
            labels: &[],
        })
        .expect("render");
        let document = part(&docx, "word/document.xml");
        assert!(document.contains("(no speech)"));
        assert!(!document.contains("Labels"));
        assert!(!document.contains("Participants"));
        assert!(!part(&docx, "docProps/core.xml").contains("dc:language"));
    }

    #[test]
    fn clock_counts_hours_past_a_day() {
        assert_eq!(clock(0), "00:00:00");
        assert_eq!(clock(3_723_999), "01:02:03");
        assert_eq!(clock(100 * 3_600_000), "100:00:00");
    }

    /// Opens the .docx in LibreOffice when `KIROKU_TEST_LIBREOFFICE` names its binary
    /// (`soffice` or `libreoffice`): converts it to PDF and to plain text and checks
    /// what comes out. Skipped, with a note, when the variable is unset.
    #[test]
    fn libreoffice_opens_and_converts_the_document() {
        let Some(bin) = std::env::var_os("KIROKU_TEST_LIBREOFFICE") else {
            println!("skipped: set KIROKU_TEST_LIBREOFFICE to a soffice binary to run it");
            return;
        };
        let dir = scratch_dir();
        let docx = dir.join("minutes.docx");
        std::fs::write(&docx, render_sample(TITLE)).expect("write docx");

        convert(Path::new(&bin), &dir, &docx, "pdf");
        let pdf = std::fs::read(dir.join("minutes.pdf")).expect("LibreOffice wrote no PDF");
        assert!(pdf.starts_with(b"%PDF"), "not a PDF");
        assert!(pdf.len() > 1_000, "PDF of {} bytes", pdf.len());

        // UTF-8 whatever the locale: plain "txt:Text" writes the locale's encoding and
        // loses the Japanese under LC_ALL=C.
        convert(Path::new(&bin), &dir, &docx, "txt:Text (encoded):UTF8");
        let txt = std::fs::read(dir.join("minutes.txt")).expect("LibreOffice wrote no text");
        let txt = String::from_utf8_lossy(&txt);
        for expected in [TITLE, ENGLISH, JAPANESE, MEMO, "[00:00:01]", "Alice & Bob"] {
            assert!(txt.contains(expected), "{expected:?} missing from:\n{txt}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A fresh directory under the system's temp dir, unique to this run.
    fn scratch_dir() -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!("kiroku-docx-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    /// Runs `<bin> --headless --convert-to <to> --outdir <dir> <docx>` with a
    /// profile of its own (so a running LibreOffice does not interfere), failing the
    /// test if it errs or takes longer than two minutes.
    fn convert(bin: &Path, dir: &Path, docx: &Path, to: &str) {
        let started = Instant::now();
        let mut child = Command::new(bin)
            .arg(format!(
                "-env:UserInstallation=file://{}",
                dir.join("profile").display()
            ))
            .args(["--headless", "--convert-to", to, "--outdir"])
            .arg(dir)
            .arg(docx)
            .spawn()
            .expect("start LibreOffice");
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for LibreOffice") {
                break status;
            }
            if started.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("LibreOffice took over two minutes converting to {to}");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            status.success(),
            "LibreOffice failed converting to {to}: {status}"
        );
        println!("converted to {to} in {:.1?}", started.elapsed());
    }
}
