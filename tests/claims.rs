//! The claims catalogue (spec/claims.toml) and the scenarios agree: every id a scenario
//! cites has an entry, every entry is cited; `layerspec check` locates each disagreement,
//! and `layerspec claims --results` puts the claims no passing run shows first.

use layerspec::catalogue::Catalogue;
use layerspec::suite;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A directory of its own for one test, removed when the test ends (however it ends).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("layerspec-claims-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn layerspec(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_layerspec"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn every_cited_id_is_catalogued_and_every_entry_cited() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = suite::discover(&[root.join("scenarios")]).unwrap();
    let (scenarios, errs) = suite::load(&files);
    assert!(errs.is_empty(), "{errs:?}");
    let cat = Catalogue::embedded().unwrap_or_else(|p| panic!("{p:?}"));
    let problems = layerspec::claims::check(&cat, &scenarios, true);
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert!(text.is_empty(), "{}", text.join("\n"));
    // The command says the same.
    let o = layerspec(&["check"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
}

#[test]
fn the_built_in_catalogue_is_the_repositorys_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let on_disk = std::fs::read_to_string(root.join("spec/claims.toml")).unwrap();
    assert_eq!(on_disk, layerspec::catalogue::EMBEDDED);
}

#[test]
fn an_uncatalogued_id_is_an_error_at_its_place_in_the_scenario() {
    let dir = TempDir::new("uncatalogued");
    let f = dir.write(
        "case.toml",
        "title = \"t\"\nclaims = [\"S1\", \"free text\",\n  \"ZZ9\"]\n",
    );
    let o = layerspec(&["check", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o).replace(f.to_str().unwrap(), "FILE");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("FILE:3:3: claim `ZZ9` has no entry in the claims catalogue"),
        "{err}"
    );
}

#[test]
fn free_text_claims_need_no_entry() {
    let dir = TempDir::new("free");
    let f = dir.write(
        "case.toml",
        "title = \"t\"\nclaims = [\"ENAMETOOLONG\", \"OVL4: the EXDEV limit is overlayfs-only\", \"ovl4\", \"S1a\"]\n",
    );
    let o = layerspec(&["check", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn an_uncited_entry_is_an_error_at_its_place_in_the_catalogue() {
    let dir = TempDir::new("uncited");
    let extra = "\n[[claim]]\nid = \"ZZ1\"\nstatement = \"s\"\nsources = [\"measured here: nowhere/none\"]\n";
    let text = format!("{}{extra}", layerspec::catalogue::EMBEDDED);
    let line = text.lines().count() - 2;
    let cat = dir.write("claims.toml", &text);
    let o = layerspec(&["check", "--catalogue", cat.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o).replace(cat.to_str().unwrap(), "CAT");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with(&format!(
            "CAT:{line}:6: claim `ZZ1` is cited by no scenario"
        )),
        "{err}"
    );
    assert!(
        lines[1].contains("`measured here: nowhere/none` names no scenario"),
        "{err}"
    );
    // Checking some files only cannot tell what the rest of the suite cites.
    let o = layerspec(&[
        "check",
        "--catalogue",
        cat.to_str().unwrap(),
        "scenarios/xattr",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn claims_no_passing_run_shows_come_first() {
    let dir = TempDir::new("results");
    // layout/entry_kinds cites S1 and S6; aufs/branch_stacking S1, S2, S6, AUFS2, AUFS5.
    let results = dir.write(
        "r.json",
        concat!(
            r#"{"scenario":"layout/entry_kinds","driver":"overlay2","backend":"model","status":"pass","detail":"","kernel":"6.18"}"#,
            "\n",
            r#"{"scenario":"aufs/branch_stacking","driver":"aufs","backend":"model","status":"fail","detail":"step 2: boom","kernel":"6.18"}"#,
            "\n",
        ),
    );
    let o = layerspec(&["claims", "--results", results.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let unshown = out.find("## Claims no passing run shows").expect(&out);
    let failing = out
        .find("## Claims shown, with failing runs (2)")
        .expect(&out);
    assert!(unshown < failing);
    assert!(
        !out.contains("## Claims shown by passing runs"),
        "every shown claim has a failing run here"
    );
    let s1 = out.find("\nS1\n").unwrap();
    assert!(s1 > failing);
    let aufs5 = out.find("\nAUFS5\n").unwrap();
    assert!(aufs5 < failing, "AUFS5 has no passing run");
    assert!(out[s1..].contains("FAIL aufs/branch_stacking [aufs] on model"));
    assert!(out.contains("statement: A union mount stacks several directories"));
}
