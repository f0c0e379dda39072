//! The sample home that `capstan init` writes: a local default, a docker and a kubernetes
//! configuration, two groups, an admin and a normal user, and a sample project.

use std::path::PathBuf;

/// The files of the sample home, relative to its root, with the two users' token digests
/// filled in.
pub fn sample_home(admin_token_sha256: &str, user_token_sha256: &str) -> Vec<(PathBuf, String)> {
    let files: [(&str, &str); 26] = [
        ("capstan.toml", include_str!("sample/capstan.toml")),
        (
            "exec-configs.toml",
            include_str!("sample/exec-configs.toml"),
        ),
        ("clusters.toml", include_str!("sample/clusters.toml")),
        (
            "spark-configs.toml",
            include_str!("sample/spark-configs.toml"),
        ),
        ("images.toml", include_str!("sample/images.toml")),
        ("users.toml", include_str!("sample/users.toml")),
        (
            "projects/sample/project.toml",
            include_str!("sample/projects/sample/project.toml"),
        ),
        (
            "projects/sample/recipes/hello.toml",
            include_str!("sample/projects/sample/recipes/hello.toml"),
        ),
        (
            "projects/sample/recipes/hello.py",
            include_str!("sample/projects/sample/recipes/hello.py"),
        ),
        (
            "projects/sample/recipes/inventory.toml",
            include_str!("sample/projects/sample/recipes/inventory.toml"),
        ),
        (
            "projects/sample/recipes/inventory.sh",
            include_str!("sample/projects/sample/recipes/inventory.sh"),
        ),
        (
            "projects/sample/recipes/wine_stats.toml",
            include_str!("sample/projects/sample/recipes/wine_stats.toml"),
        ),
        (
            "projects/sample/recipes/wine_stats.py",
            include_str!("sample/projects/sample/recipes/wine_stats.py"),
        ),
        (
            "projects/sample/recipes/wine_stats_r.toml",
            include_str!("sample/projects/sample/recipes/wine_stats_r.toml"),
        ),
        (
            "projects/sample/recipes/wine_stats_r.R",
            include_str!("sample/projects/sample/recipes/wine_stats_r.R"),
        ),
        (
            "projects/sample/recipes/wine_sql.toml",
            include_str!("sample/projects/sample/recipes/wine_sql.toml"),
        ),
        (
            "projects/sample/recipes/wine_sql.sql",
            include_str!("sample/projects/sample/recipes/wine_sql.sql"),
        ),
        (
            "projects/sample/recipes/wine_prepare.toml",
            include_str!("sample/projects/sample/recipes/wine_prepare.toml"),
        ),
        (
            "projects/sample/recipes/wine_cultivar_stats.toml",
            include_str!("sample/projects/sample/recipes/wine_cultivar_stats.toml"),
        ),
        (
            "projects/sample/recipes/wine_enriched.toml",
            include_str!("sample/projects/sample/recipes/wine_enriched.toml"),
        ),
        (
            "projects/sample/recipes/wine_model.toml",
            include_str!("sample/projects/sample/recipes/wine_model.toml"),
        ),
        (
            "projects/sample/recipes/wine_scored.toml",
            include_str!("sample/projects/sample/recipes/wine_scored.toml"),
        ),
        (
            "projects/sample/recipes/wine_eval.toml",
            include_str!("sample/projects/sample/recipes/wine_eval.toml"),
        ),
        (
            "projects/sample/data/wine.csv",
            include_str!("sample/projects/sample/data/wine.csv"),
        ),
        (
            "projects/sample/data/README.md",
            include_str!("sample/projects/sample/data/README.md"),
        ),
        (".gitignore", "/state/\n/data/\n/models/\n"),
    ];
    files
        .iter()
        .map(|(path, text)| {
            let text = text
                .replace("@ADMIN_TOKEN_SHA256@", admin_token_sha256)
                .replace("@ALICE_TOKEN_SHA256@", user_token_sha256);
            (PathBuf::from(path), text)
        })
        .collect()
}
