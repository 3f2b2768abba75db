//! A source's own configuration file, `conf.d/NAME.toml` beside the main file: what
//! `aksync connect` writes and `aksync disconnect` removes. The file holds the source's
//! settings and its token (or the path of its token file), so it is created readable by its
//! owner only, under a temporary name, and linked into place only if no file took its name
//! meanwhile; it is removed by first setting it aside, so that a failure to record the
//! disconnection can put it back.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{
    is_valid_source_name, source_name_rule, Config, ConfigError, ConfigLocation, DropInChange,
};
use crate::config::secret::ApiToken;

/// Where the new source's token comes from.
pub enum NewToken {
    /// Written into the source's file (`token = "…"`).
    Inline(ApiToken),
    /// Named by the source's file (`token_file = "…"`), as an absolute path.
    File(PathBuf),
}

/// The source `aksync connect` adds.
pub struct NewSource<'a> {
    pub name: &'a str,
    pub base_url: &'a str,
    pub token: NewToken,
    pub primary_directory: bool,
    pub disable_group_sync: bool,
    pub filter: Option<&'a str>,
    pub group_filter: Option<&'a str>,
}

impl NewSource<'_> {
    /// The file's text. It may hold the token: it goes only into the file.
    fn toml(&self) -> String {
        let mut text = format!(
            "# Written by `aksync connect {name}`; `aksync disconnect {name}` removes it.\n[sources.{name}]\nbase_url = {}\n",
            toml_string(self.base_url),
            name = self.name
        );
        match &self.token {
            NewToken::Inline(token) => {
                text.push_str(&format!("token = {}\n", toml_string(token.config_value())))
            }
            NewToken::File(path) => text.push_str(&format!(
                "token_file = {}\n",
                toml_string(&path.display().to_string())
            )),
        }
        if self.primary_directory {
            text.push_str("primary_directory = true\n");
        }
        if self.disable_group_sync {
            text.push_str("disable_group_sync = true\n");
        }
        if let Some(filter) = self.filter {
            text.push_str(&format!("filter = {}\n", toml_string(filter)));
        }
        if let Some(filter) = self.group_filter {
            text.push_str(&format!("group_filter = {}\n", toml_string(filter)));
        }
        text
    }
}

/// A TOML basic string: JSON's escapes are TOML's, except that TOML also wants DEL escaped.
fn toml_string(value: &str) -> String {
    serde_json::Value::from(value)
        .to_string()
        .replace('\u{7f}', "\\u007F")
}

/// `conf.d/NAME.toml` beside the main configuration file.
pub fn drop_in_path(location: &ConfigLocation, name: &str) -> PathBuf {
    super::conf_d_dir(location.path()).join(format!("{name}.toml"))
}

/// The configuration as it would be with `source` added, validated as loading validates
/// it (its filter compiles, at most one primary directory, …), and the file's text. Refused
/// when the main file is missing, the name is not a source name, or a source of that name
/// is configured already.
pub fn with_new_source(
    location: &ConfigLocation,
    source: &NewSource<'_>,
) -> Result<(Config, DropInText), ConfigError> {
    let main = location.path();
    let origin = main.display().to_string();
    let invalid = |message: String| ConfigError::Invalid {
        origin: origin.clone(),
        message,
    };
    if !main.is_file() {
        return Err(ConfigError::NoConfig(main.to_path_buf()));
    }
    if !is_valid_source_name(source.name) {
        return Err(invalid(format!(
            "`aksync connect {}`: {}",
            source.name,
            source_name_rule(source.name)
        )));
    }
    let path = drop_in_path(location, source.name);
    if let Some(defined_in) = defined_in(location, source.name, DropInChange::None)? {
        return Err(invalid(format!(
            "source `{}` already exists (in {defined_in}): choose another name, or `aksync disconnect {}` first",
            source.name, source.name
        )));
    }
    if path.exists() {
        return Err(invalid(format!(
            "{} already exists: move it aside, or choose another name",
            path.display()
        )));
    }
    let text = source.toml();
    let config = Config::load_changed(location, DropInChange::Add(&text))?;
    Ok((config, DropInText { path, text }))
}

/// The file of a source that `aksync disconnect` removes: `conf.d/NAME.toml`, which must
/// define the source, and no other file or variable may define it too (or it would still be
/// collected from).
pub fn of_connected_source(location: &ConfigLocation, name: &str) -> Result<PathBuf, ConfigError> {
    let path = drop_in_path(location, name);
    let origin = location.path().display().to_string();
    let invalid = |message: String| ConfigError::Invalid {
        origin: origin.clone(),
        message,
    };
    let defined = defined_in(location, name, DropInChange::None)?;
    if defined.is_none() {
        return Err(invalid(format!(
            "no source `{name}` is configured: `aksync disconnect` removes a source that `aksync connect` added"
        )));
    }
    if !path.is_file() {
        return Err(invalid(format!(
            "source `{name}` is defined in {}, not in {} that `aksync connect` writes: remove its [sources.{name}] table there by hand",
            defined.unwrap_or_default(),
            path.display()
        )));
    }
    if let Some(elsewhere) = defined_in(location, name, DropInChange::Remove(&path))? {
        return Err(invalid(format!(
            "source `{name}` is also defined in {elsewhere}, besides {}: remove it there first, or it would still be collected from",
            path.display()
        )));
    }
    Ok(path)
}

/// Where a source is defined (the file or variables that set its keys), if it is.
fn defined_in(
    location: &ConfigLocation,
    name: &str,
    change: DropInChange<'_>,
) -> Result<Option<String>, ConfigError> {
    /// The sources only: the rest may be anything while a source is added or removed.
    #[derive(Deserialize)]
    struct Sources {
        #[serde(default)]
        sources: BTreeMap<String, BTreeMap<String, serde::de::IgnoredAny>>,
    }
    let figment = super::figment(location, change)?;
    let origin = location.path().display().to_string();
    let sources: Sources = figment
        .extract()
        .map_err(|error| super::figment_error(&figment, error, &origin))?;
    Ok(sources.sources.get(name).map(|keys| {
        let origins: std::collections::BTreeSet<String> = keys
            .keys()
            .filter_map(|key| super::origin_of(&figment, &format!("sources.{name}.{key}")))
            .collect();
        origins.into_iter().collect::<Vec<_>>().join(" and ")
    }))
}

/// The text of a source's file and where it goes.
pub struct DropInText {
    pub path: PathBuf,
    text: String,
}

impl DropInText {
    /// Writes the file under a temporary name beside its place, readable by its owner only
    /// from its creation; [`Staged::install`] puts it in place.
    pub fn stage(&self) -> Result<Staged, ConfigError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let unwritable = |error: std::io::Error| ConfigError::Unwritable {
            path: self.path.clone(),
            reason: error.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(unwritable)?;
        let mut file = tempfile::Builder::new()
            .prefix(".aksync-connect-")
            .suffix(".tmp")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(unwritable)?;
        file.write_all(self.text.as_bytes()).map_err(unwritable)?;
        file.as_file().sync_all().map_err(unwritable)?;
        Ok(Staged {
            file,
            path: self.path.clone(),
        })
    }
}

/// A source's file written under a temporary name: removed unless installed.
pub struct Staged {
    file: tempfile::NamedTempFile,
    path: PathBuf,
}

impl Staged {
    /// Links the file into place, unless a file of that name appeared meanwhile.
    pub fn install(self) -> Result<PathBuf, ConfigError> {
        let path = self.path;
        self.file
            .persist_noclobber(&path)
            .map_err(|error| ConfigError::Unwritable {
                path: path.clone(),
                reason: error.error.to_string(),
            })?;
        sync_dir(&path);
        Ok(path)
    }
}

/// A source's file moved aside while its disconnection is recorded: put back unless
/// [`SetAside::discard`]ed, so that a failure leaves the source as it was.
pub struct SetAside {
    aside: PathBuf,
    path: PathBuf,
    discarded: bool,
}

impl SetAside {
    pub fn new(path: &Path) -> Result<SetAside, ConfigError> {
        let file_name = path.file_name().unwrap_or_default().to_string_lossy();
        // Not `*.toml`: the loader no longer reads it.
        let aside = path.with_file_name(format!(".{file_name}.disconnecting"));
        std::fs::rename(path, &aside).map_err(|error| ConfigError::Unwritable {
            path: path.to_path_buf(),
            reason: error.to_string(),
        })?;
        Ok(SetAside {
            aside,
            path: path.to_path_buf(),
            discarded: false,
        })
    }

    /// Removes the file for good.
    pub fn discard(mut self) -> Result<(), ConfigError> {
        self.discarded = true;
        std::fs::remove_file(&self.aside).map_err(|error| ConfigError::Unwritable {
            path: self.aside.clone(),
            reason: error.to_string(),
        })?;
        sync_dir(&self.path);
        Ok(())
    }
}

impl Drop for SetAside {
    fn drop(&mut self) {
        if !self.discarded {
            if let Err(error) = std::fs::rename(&self.aside, &self.path) {
                tracing::error!(
                    "cannot put {} back as {}: {error}; rename it by hand",
                    self.aside.display(),
                    self.path.display()
                );
            }
        }
    }
}

/// Makes a rename or removal in `path`'s directory durable; a failure only weakens that, so
/// it is not an error.
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::{Format, Toml};

    #[test]
    fn strings_read_back_as_written() {
        let awkward = "payload.name == \"a\\\\b\" && 'x\ty' != '\u{7f}\u{1}é'";
        let source = NewSource {
            name: "corp",
            base_url: "https://ak.example.com",
            token: NewToken::Inline(ApiToken::new("tok\"en")),
            primary_directory: true,
            disable_group_sync: false,
            filter: Some(awkward),
            group_filter: Some("payload.name.startsWith('g\\'')"),
        };
        let text = source.toml();
        let parsed: serde_json::Value = figment::Figment::from(Toml::string(&text))
            .extract()
            .unwrap();
        let table = &parsed["sources"]["corp"];
        assert_eq!(table["filter"], awkward);
        assert_eq!(table["group_filter"], "payload.name.startsWith('g\\'')");
        assert_eq!(table["token"], "tok\"en");
        assert_eq!(table["primary_directory"], true);
        assert!(table.get("disable_group_sync").is_none());
        let by_file = NewSource {
            token: NewToken::File(PathBuf::from("/etc/aksync/corp.token")),
            filter: None,
            ..source
        };
        let parsed: serde_json::Value = figment::Figment::from(Toml::string(&by_file.toml()))
            .extract()
            .unwrap();
        assert_eq!(
            parsed["sources"]["corp"]["token_file"],
            "/etc/aksync/corp.token"
        );
        assert!(parsed["sources"]["corp"].get("token").is_none());
    }
}
