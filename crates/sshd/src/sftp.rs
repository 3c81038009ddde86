//! Built-in sftp server (protocol version 3, as OpenSSH's `sftp` and `scp` speak it) on the
//! files of the process user. Relative paths start at the home directory.

use std::collections::HashMap;
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use russh_sftp::protocol::{
    Attrs, Data, ExtendedReply, File as NameEntry, FileAttributes, Handle, Name, OpenFlags, Packet,
    Status, StatusCode, Version,
};
use russh_sftp::server::{Handler, StatusReply};
use tracing::debug;

/// Largest read served at once; OpenSSH clients ask for 32 KiB to 255 KiB.
const MAX_READ: u32 = 256 * 1024;
/// Directory entries returned per `SSH_FXP_READDIR`.
const READDIR_BATCH: usize = 128;
/// Open handles allowed per sftp session.
const MAX_HANDLES: usize = 1024;

enum OpenHandle {
    File {
        file: Arc<File>,
    },
    Dir {
        entries: Vec<NameEntry>,
        position: usize,
    },
}

/// One sftp session: open handles and the directory relative paths start from.
pub struct SftpSession {
    home: PathBuf,
    handles: HashMap<String, OpenHandle>,
    next_handle: u64,
}

impl SftpSession {
    /// Creates a session rooted (for relative paths only) at `home`.
    pub fn new(home: PathBuf) -> Self {
        Self {
            home,
            handles: HashMap::new(),
            next_handle: 1,
        }
    }

    fn path(&self, path: &str) -> PathBuf {
        if path.is_empty() {
            return self.home.clone();
        }
        let path = Path::new(path);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.home.join(path)
        }
    }

    fn insert(&mut self, handle: OpenHandle) -> Result<String, StatusReply> {
        if self.handles.len() >= MAX_HANDLES {
            return Err(StatusCode::Failure.with_message("too many open handles"));
        }
        let name = self.next_handle.to_string();
        self.next_handle += 1;
        self.handles.insert(name.clone(), handle);
        Ok(name)
    }

    fn file(&self, handle: &str) -> Result<Arc<File>, StatusReply> {
        match self.handles.get(handle) {
            Some(OpenHandle::File { file }) => Ok(Arc::clone(file)),
            _ => Err(StatusCode::Failure.with_message(format!("invalid file handle {handle:?}"))),
        }
    }
}

fn status_of(error: io::Error) -> StatusReply {
    let code = match error.kind() {
        io::ErrorKind::NotFound => StatusCode::NoSuchFile,
        io::ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
        _ => StatusCode::Failure,
    };
    code.with_message(error.to_string())
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".to_owned(),
        language_tag: "en-US".to_owned(),
    }
}

/// Runs blocking file-system work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, StatusReply> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(status_of),
        Err(_) => Err(StatusCode::Failure.with_message("file operation panicked")),
    }
}

/// Converts metadata (including the file type bits of the mode) to sftp attributes.
fn attributes(metadata: &Metadata) -> FileAttributes {
    let seconds = |time: io::Result<std::time::SystemTime>| {
        time.ok()
            .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
            .map(|elapsed| u32::try_from(elapsed.as_secs()).unwrap_or(u32::MAX))
            .unwrap_or(0)
    };
    FileAttributes {
        size: Some(metadata.len()),
        uid: Some(metadata.uid()),
        user: None,
        gid: Some(metadata.gid()),
        group: None,
        permissions: Some(metadata.mode()),
        atime: Some(seconds(metadata.accessed())),
        mtime: Some(seconds(metadata.modified())),
    }
}

/// Formats an `ls -l` line as OpenSSH's sftp-server does, with numeric owner and group.
fn long_listing(name: &str, attrs: &FileAttributes) -> String {
    let mode = attrs.permissions.unwrap_or(0);
    let kind = match mode & 0o170000 {
        0o040000 => 'd',
        0o120000 => 'l',
        0o020000 => 'c',
        0o060000 => 'b',
        0o010000 => 'p',
        0o140000 => 's',
        _ => '-',
    };
    let mut permissions = String::with_capacity(10);
    permissions.push(kind);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 0o7;
        permissions.push(if bits & 4 != 0 { 'r' } else { '-' });
        permissions.push(if bits & 2 != 0 { 'w' } else { '-' });
        permissions.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    format!(
        "{permissions}    1 {:<8} {:<8} {:>8} {} {name}",
        attrs.uid.unwrap_or(0),
        attrs.gid.unwrap_or(0),
        attrs.size.unwrap_or(0),
        format_mtime(attrs.mtime.unwrap_or(0)),
    )
}

/// Formats a Unix time as `Mon dd HH:MM` in UTC.
fn format_mtime(seconds: u32) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let seconds = i64::from(seconds);
    let (days, of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let month_name = MONTHS[usize::try_from(month - 1).unwrap_or(0)];
    format!(
        "{month_name} {day:>2} {:02}:{:02}",
        of_day / 3600,
        of_day % 3600 / 60
    )
}

/// Applies SETSTAT attributes: size, permissions, owner, times.
fn apply_attributes(
    path: Option<&Path>,
    file: Option<&File>,
    attrs: &FileAttributes,
) -> io::Result<()> {
    if let Some(size) = attrs.size {
        match (file, path) {
            (Some(file), _) => file.set_len(size)?,
            (None, Some(path)) => OpenOptions::new().write(true).open(path)?.set_len(size)?,
            _ => {}
        }
    }
    if let Some(mode) = attrs.permissions {
        let permissions = std::fs::Permissions::from_mode(mode & 0o7777);
        match (file, path) {
            (Some(file), _) => file.set_permissions(permissions)?,
            (None, Some(path)) => std::fs::set_permissions(path, permissions)?,
            _ => {}
        }
    }
    if attrs.uid.is_some() || attrs.gid.is_some() {
        let owner = attrs.uid.map(rustix::fs::Uid::from_raw);
        let group = attrs.gid.map(rustix::fs::Gid::from_raw);
        match (file, path) {
            (Some(file), _) => rustix::fs::fchown(file, owner, group)?,
            (None, Some(path)) => rustix::fs::chown(path, owner, group)?,
            _ => {}
        }
    }
    if let (Some(atime), Some(mtime)) = (attrs.atime, attrs.mtime) {
        let times = std::fs::FileTimes::new()
            .set_accessed(UNIX_EPOCH + Duration::from_secs(atime.into()))
            .set_modified(UNIX_EPOCH + Duration::from_secs(mtime.into()));
        match (file, path) {
            (Some(file), _) => file.set_times(times)?,
            (None, Some(path)) => File::options()
                .write(true)
                .open(path)
                .or_else(|_| File::open(path))?
                .set_times(times)?,
            _ => {}
        }
    }
    Ok(())
}

/// Normalises `.` and `..` without touching the file system, for paths that do not exist yet.
fn normalize_lexically(path: &Path) -> PathBuf {
    let mut result = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::ParentDir => {
                result.pop();
            }
            Component::Normal(part) => result.push(part),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    result
}

/// Reads an SSH `string` from extension request data.
fn take_string(data: &mut &[u8]) -> Option<String> {
    if data.len() < 4 {
        return None;
    }
    let length = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let bytes = data.get(4..4 + length)?;
    *data = &data[4 + length..];
    String::from_utf8(bytes.to_vec()).ok()
}

fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    match rustix::fs::renameat_with(
        rustix::fs::CWD,
        from,
        rustix::fs::CWD,
        to,
        rustix::fs::RenameFlags::NOREPLACE,
    ) {
        Ok(()) => Ok(()),
        // File systems without RENAME_NOREPLACE: check, then rename.
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOSYS) => {
            if to.symlink_metadata().is_ok() {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            std::fs::rename(from, to)
        }
        Err(error) => Err(error.into()),
    }
}

impl Handler for SftpSession {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        StatusCode::OpUnsupported.into()
    }

    async fn init(
        &mut self,
        version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        debug!(version, "sftp session started");
        let mut reply = Version::new();
        // Extension versions as OpenSSH's sftp-server announces them; its client checks them.
        for (name, version) in [
            ("posix-rename@openssh.com", "1"),
            ("statvfs@openssh.com", "2"),
            ("hardlink@openssh.com", "1"),
            ("fsync@openssh.com", "1"),
            ("expand-path@openssh.com", "1"),
        ] {
            reply.extensions.insert(name.to_owned(), version.to_owned());
        }
        Ok(reply)
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        flags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        let path = self.path(&filename);
        let mode = attrs.permissions.unwrap_or(0o666) & 0o7777;
        let file = blocking(move || {
            let mut options: OpenOptions = flags.into();
            if !flags.contains(OpenFlags::READ) && !flags.contains(OpenFlags::WRITE) {
                options.read(true);
            }
            options.mode(mode).open(&path)
        })
        .await?;
        let handle = self.insert(OpenHandle::File {
            file: Arc::new(file),
        })?;
        Ok(Handle { id, handle })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        match self.handles.remove(&handle) {
            Some(_) => Ok(ok(id)),
            None => Err(StatusCode::Failure.with_message(format!("invalid handle {handle:?}"))),
        }
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let file = self.file(&handle)?;
        let length = len.min(MAX_READ) as usize;
        let data = blocking(move || {
            let mut buffer = vec![0u8; length];
            let mut filled = 0;
            while filled < length {
                match file.read_at(&mut buffer[filled..], offset + filled as u64) {
                    Ok(0) => break,
                    Ok(count) => filled += count,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(error),
                }
            }
            buffer.truncate(filled);
            Ok(buffer)
        })
        .await?;
        if data.is_empty() {
            return Err(StatusCode::Eof.into());
        }
        Ok(Data { id, data })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        let file = self.file(&handle)?;
        blocking(move || file.write_all_at(&data, offset)).await?;
        Ok(ok(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let path = self.path(&path);
        let metadata = blocking(move || std::fs::symlink_metadata(path)).await?;
        Ok(Attrs {
            id,
            attrs: attributes(&metadata),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let file = self.file(&handle)?;
        let metadata = blocking(move || file.metadata()).await?;
        Ok(Attrs {
            id,
            attrs: attributes(&metadata),
        })
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let path = self.path(&path);
        blocking(move || apply_attributes(Some(&path), None, &attrs)).await?;
        Ok(ok(id))
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let file = self.file(&handle)?;
        blocking(move || apply_attributes(None, Some(&file), &attrs)).await?;
        Ok(ok(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        let path = self.path(&path);
        let entries = blocking(move || {
            let mut entries = Vec::new();
            for entry in std::fs::read_dir(&path)? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let attrs = match entry.path().symlink_metadata() {
                    Ok(metadata) => attributes(&metadata),
                    Err(_) => FileAttributes::empty(),
                };
                let longname = long_listing(&name, &attrs);
                entries.push(NameEntry {
                    filename: name,
                    longname,
                    attrs,
                });
            }
            Ok(entries)
        })
        .await?;
        let handle = self.insert(OpenHandle::Dir {
            entries,
            position: 0,
        })?;
        Ok(Handle { id, handle })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        let Some(OpenHandle::Dir { entries, position }) = self.handles.get_mut(&handle) else {
            return Err(
                StatusCode::Failure.with_message(format!("invalid directory handle {handle:?}"))
            );
        };
        if *position >= entries.len() {
            return Err(StatusCode::Eof.into());
        }
        let end = (*position + READDIR_BATCH).min(entries.len());
        let files = entries[*position..end].to_vec();
        *position = end;
        Ok(Name { id, files })
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        let path = self.path(&filename);
        blocking(move || std::fs::remove_file(path)).await?;
        Ok(ok(id))
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let path = self.path(&path);
        let mode = attrs.permissions.unwrap_or(0o777) & 0o7777;
        blocking(move || std::fs::DirBuilder::new().mode(mode).create(path)).await?;
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        let path = self.path(&path);
        blocking(move || std::fs::remove_dir(path)).await?;
        Ok(ok(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let path = self.path(&path);
        let resolved = blocking(move || {
            Ok(std::fs::canonicalize(&path).unwrap_or_else(|_| normalize_lexically(&path)))
        })
        .await?;
        Ok(Name {
            id,
            files: vec![NameEntry::dummy(resolved.to_string_lossy())],
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let path = self.path(&path);
        let metadata = blocking(move || std::fs::metadata(path)).await?;
        Ok(Attrs {
            id,
            attrs: attributes(&metadata),
        })
    }

    async fn rename(
        &mut self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, Self::Error> {
        let (from, to) = (self.path(&oldpath), self.path(&newpath));
        blocking(move || rename_no_replace(&from, &to)).await?;
        Ok(ok(id))
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let path = self.path(&path);
        let target = blocking(move || std::fs::read_link(path)).await?;
        Ok(Name {
            id,
            files: vec![NameEntry::dummy(target.to_string_lossy())],
        })
    }

    /// Creates a symlink. OpenSSH clients send the target first and the link path second, the
    /// reverse of the draft's field names (OpenSSH's PROTOCOL file documents this), so this
    /// server follows OpenSSH.
    async fn symlink(
        &mut self,
        id: u32,
        linkpath: String,
        targetpath: String,
    ) -> Result<Status, Self::Error> {
        let target = PathBuf::from(linkpath);
        let link = self.path(&targetpath);
        blocking(move || std::os::unix::fs::symlink(target, link)).await?;
        Ok(ok(id))
    }

    async fn extended(
        &mut self,
        id: u32,
        request: String,
        data: Vec<u8>,
    ) -> Result<Packet, Self::Error> {
        let mut cursor = data.as_slice();
        let bad = || StatusReply::from(StatusCode::BadMessage);
        match request.as_str() {
            "posix-rename@openssh.com" => {
                let from = self.path(&take_string(&mut cursor).ok_or_else(bad)?);
                let to = self.path(&take_string(&mut cursor).ok_or_else(bad)?);
                blocking(move || std::fs::rename(from, to)).await?;
                Ok(Packet::Status(ok(id)))
            }
            "hardlink@openssh.com" => {
                let from = self.path(&take_string(&mut cursor).ok_or_else(bad)?);
                let to = self.path(&take_string(&mut cursor).ok_or_else(bad)?);
                blocking(move || std::fs::hard_link(from, to)).await?;
                Ok(Packet::Status(ok(id)))
            }
            "fsync@openssh.com" => {
                let handle = take_string(&mut cursor).ok_or_else(bad)?;
                let file = self.file(&handle)?;
                blocking(move || file.sync_all()).await?;
                Ok(Packet::Status(ok(id)))
            }
            "expand-path@openssh.com" => {
                let requested = take_string(&mut cursor).ok_or_else(bad)?;
                let expanded = match requested.strip_prefix('~') {
                    Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                        self.home.join(rest.trim_start_matches('/'))
                    }
                    _ => self.path(&requested),
                };
                let name = NameEntry::dummy(normalize_lexically(&expanded).to_string_lossy());
                Ok(Packet::Name(Name {
                    id,
                    files: vec![name],
                }))
            }
            "statvfs@openssh.com" => {
                let path = self.path(&take_string(&mut cursor).ok_or_else(bad)?);
                let stats =
                    blocking(move || rustix::fs::statvfs(&path).map_err(io::Error::from)).await?;
                let fields = [
                    stats.f_bsize,
                    stats.f_frsize,
                    stats.f_blocks,
                    stats.f_bfree,
                    stats.f_bavail,
                    stats.f_files,
                    stats.f_ffree,
                    stats.f_favail,
                    stats.f_fsid,
                    stats.f_flag.bits(),
                    stats.f_namemax,
                ];
                let data = fields
                    .iter()
                    .flat_map(|field| field.to_be_bytes())
                    .collect();
                Ok(Packet::ExtendedReply(ExtendedReply { id, data }))
            }
            _ => Err(StatusCode::OpUnsupported.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_start_at_home() {
        let session = SftpSession::new(PathBuf::from("/home/jovyan"));
        assert_eq!(session.path(""), PathBuf::from("/home/jovyan"));
        assert_eq!(session.path("work/a"), PathBuf::from("/home/jovyan/work/a"));
        assert_eq!(session.path("/etc/hosts"), PathBuf::from("/etc/hosts"));
    }

    #[test]
    fn long_listing_format() {
        let attrs = FileAttributes {
            size: Some(11),
            uid: Some(1000),
            gid: Some(100),
            permissions: Some(0o100644),
            mtime: Some(1_780_000_000),
            ..FileAttributes::default()
        };
        assert_eq!(
            long_listing("a.txt", &attrs),
            "-rw-r--r--    1 1000     100            11 May 28 20:26 a.txt"
        );
        assert_eq!(format_mtime(0), "Jan  1 00:00");
    }

    #[test]
    fn lexical_normalisation() {
        assert_eq!(
            normalize_lexically(Path::new("/a/b/../c/./d")),
            PathBuf::from("/a/c/d")
        );
        assert_eq!(normalize_lexically(Path::new("/../..")), PathBuf::from("/"));
    }

    #[test]
    fn extension_strings_parse() {
        let mut data: &[u8] = &[0, 0, 0, 2, b'h', b'i', 0, 0, 0, 0];
        assert_eq!(take_string(&mut data), Some("hi".to_owned()));
        assert_eq!(take_string(&mut data), Some(String::new()));
        assert_eq!(take_string(&mut data), None);
        let mut short: &[u8] = &[0, 0, 0, 9, b'x'];
        assert_eq!(take_string(&mut short), None);
    }

    #[test]
    fn rename_refuses_to_replace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "a").expect("write");
        std::fs::write(&b, "b").expect("write");
        assert!(rename_no_replace(&a, &b).is_err());
        std::fs::remove_file(&b).expect("remove");
        rename_no_replace(&a, &b).expect("rename");
        assert_eq!(std::fs::read_to_string(&b).expect("read"), "a");
    }
}
