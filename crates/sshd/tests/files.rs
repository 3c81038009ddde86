//! File transfer through the built-in sftp subsystem with OpenSSH's `scp` and `sftp`.

mod common;

use std::process::{Command, Stdio};

use common::{Fixture, Server, run, sha256_file, write_random_file};

const LARGE_FILE: usize = 100 * 1024 * 1024;

fn scp(server: &Server, fixture: &Fixture) -> Command {
    common::require_tool("scp");
    let mut command = Command::new("scp");
    command
        .args(server.client_options(&fixture.user_key))
        .args(["-q", "-P", &server.address.port().to_string()]);
    command
}

fn sftp_batch(server: &Server, fixture: &Fixture, batch: &str) -> std::process::Output {
    common::require_tool("sftp");
    let batch_file = fixture.path("batch");
    std::fs::write(&batch_file, batch).expect("write batch");
    run(Command::new("sftp")
        .args(server.client_options(&fixture.user_key))
        .args(["-P", &server.address.port().to_string(), "-b"])
        .arg(&batch_file)
        .arg(server.target())
        .stdin(Stdio::null()))
}

#[test]
fn scp_round_trip_of_100_mib() {
    let fixture = Fixture::new();
    let server = Server::start(&fixture, &[]);
    let source = fixture.path("source.bin");
    write_random_file(&source, LARGE_FILE);
    let remote = fixture.path("remote.bin");
    let back = fixture.path("back.bin");

    let upload = run(scp(&server, &fixture).arg(&source).arg(format!(
        "{}:{}",
        server.target(),
        remote.display()
    )));
    assert!(upload.status.success(), "scp upload failed: {upload:?}");
    let download = run(scp(&server, &fixture)
        .arg(format!("{}:{}", server.target(), remote.display()))
        .arg(&back));
    assert!(
        download.status.success(),
        "scp download failed: {download:?}"
    );

    let expected = sha256_file(&source);
    assert_eq!(sha256_file(&remote), expected, "uploaded file differs");
    assert_eq!(sha256_file(&back), expected, "downloaded file differs");
}

#[test]
fn sftp_round_trip_of_100_mib() {
    let fixture = Fixture::new();
    let server = Server::start(&fixture, &[]);
    let source = fixture.path("source.bin");
    write_random_file(&source, LARGE_FILE);
    let remote = fixture.path("remote.bin");
    let back = fixture.path("back.bin");
    let batch = format!(
        "put {} {}\nget {} {}\n",
        source.display(),
        remote.display(),
        remote.display(),
        back.display()
    );
    let output = sftp_batch(&server, &fixture, &batch);
    assert!(output.status.success(), "sftp failed: {output:?}");
    let expected = sha256_file(&source);
    assert_eq!(sha256_file(&remote), expected, "uploaded file differs");
    assert_eq!(sha256_file(&back), expected, "downloaded file differs");
}

#[test]
fn sftp_file_operations() {
    let fixture = Fixture::new();
    let server = Server::start(&fixture, &[]);
    let root = fixture.path("remote");
    std::fs::create_dir(&root).expect("create remote dir");
    let local = fixture.path("hello.txt");
    std::fs::write(&local, "hello sftp\n").expect("write local file");
    let r = root.display();
    let batch = format!(
        "mkdir {r}/dir\n\
         put {local} {r}/dir/a.txt\n\
         ls -l {r}/dir\n\
         rename {r}/dir/a.txt {r}/dir/b.txt\n\
         chmod 600 {r}/dir/b.txt\n\
         symlink {r}/dir/b.txt {r}/link\n\
         ls -l {r}/link\n\
         get {r}/link {fetched}\n\
         df {r}\n\
         -rm {r}/missing\n\
         rm {r}/link\n",
        local = local.display(),
        fetched = fixture.path("fetched.txt").display(),
    );
    let output = sftp_batch(&server, &fixture, &batch);
    if !output.status.success() {
        server.print_log();
    }
    assert!(output.status.success(), "sftp batch failed: {output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("a.txt"), "ls output: {stdout}");

    use std::os::unix::fs::PermissionsExt;
    let moved = root.join("dir/b.txt");
    assert_eq!(
        std::fs::read_to_string(&moved).expect("read moved file"),
        "hello sftp\n"
    );
    let mode = std::fs::metadata(&moved)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "chmod");
    assert!(!root.join("dir/a.txt").exists(), "rename left the old name");
    assert!(!root.join("link").exists(), "rm left the symlink");
    let fetched = std::fs::read_to_string(fixture.path("fetched.txt")).expect("read fetched");
    assert_eq!(fetched, "hello sftp\n", "get through a symlink");
}

#[test]
fn sftp_stat_and_relative_paths_use_home() {
    let fixture = Fixture::new();
    let server = Server::start(&fixture, &[]);
    let output = sftp_batch(&server, &fixture, "pwd\nls -la /\n");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let home = String::from_utf8_lossy(&server.exec(&fixture.user_key, "echo $HOME").stdout)
        .trim()
        .to_owned();
    assert!(
        stdout.contains(&format!("Remote working directory: {home}")),
        "{stdout}"
    );
}

#[test]
fn sftp_reports_missing_files() {
    let fixture = Fixture::new();
    let server = Server::start(&fixture, &[]);
    let missing = fixture.path("does-not-exist");
    let output = sftp_batch(
        &server,
        &fixture,
        &format!(
            "get {} {}\n",
            missing.display(),
            fixture.path("x").display()
        ),
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not found") || stderr.contains("No such file"),
        "{stderr}"
    );
}
