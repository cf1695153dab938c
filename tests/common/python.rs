//! The Python interpreter that tests use to read our files back with other tools and to compute
//! reference values with the packages we match (scripts/test installs them in its venv).

/// The Python that reads shards back and computes reference scores: `$MOE_PYTHON`, else the
/// project's `.venv`, else `python3`.
pub fn python() -> String {
    if let Ok(p) = std::env::var("MOE_PYTHON") {
        return p;
    }
    let venv = crate::repo_path(".venv/bin/python");
    if venv.exists() {
        return venv.to_string_lossy().into_owned();
    }
    "python3".into()
}

/// Whether `module` imports; when it does not, the test fails where scripts/test requires the
/// Python packages (`MOE_REQUIRE_PYTHON_PACKAGES=1`) and is reported as a skip
/// elsewhere (see `moe_kernels::skip`).
pub fn python_has(module: &str) -> bool {
    let ok = std::process::Command::new(python())
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("MOE_REQUIRE_PYTHON_PACKAGES").is_none(),
            "{} cannot import {module}",
            python()
        );
        moe_kernels::skip::skip(format!("{} cannot import {module}", python()));
    }
    ok
}
