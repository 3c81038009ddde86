//! Writes the CRD YAML files of this project to `crds/`, or checks that they are current.

use std::path::PathBuf;
use std::process::ExitCode;

use api::crd_files;

const USAGE: &str = "\
Usage: crdgen [--check] [DIR]

Writes the CustomResourceDefinitions of renku-ssh as YAML files into DIR
(default: the crds/ folder of the source tree).

Options:
  --check   write nothing; exit with status 1 when a file in DIR is missing or differs
  -h, --help  print this help";

fn main() -> ExitCode {
    let mut check = false;
    let mut dir: Option<PathBuf> = None;
    for argument in std::env::args().skip(1) {
        match argument.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            option if option.starts_with('-') => {
                eprintln!("crdgen: unknown option {option:?}\n\n{USAGE}");
                return ExitCode::from(2);
            }
            path if dir.is_none() => dir = Some(PathBuf::from(path)),
            extra => {
                eprintln!("crdgen: unexpected argument {extra:?}: give at most one DIR\n\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let dir = dir.unwrap_or_else(crd_files::default_dir);

    if check {
        return match crd_files::check(&dir) {
            Ok(()) => {
                println!("CRD files in {} are current", dir.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("crdgen: {error}");
                ExitCode::FAILURE
            }
        };
    }

    match crd_files::write_all(&dir) {
        Ok(written) => {
            for path in &written {
                println!("wrote {}", path.display());
            }
            if written.is_empty() {
                println!("CRD files in {} were already current", dir.display());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("crdgen: {error}");
            ExitCode::FAILURE
        }
    }
}
