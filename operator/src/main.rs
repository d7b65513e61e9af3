fn main() {
    let root = std::path::Path::new(".");
    for (path, text) in sectordb::crdgen::files() {
        std::fs::create_dir_all(root.join(&path).parent().unwrap()).unwrap();
        std::fs::write(root.join(&path), text).unwrap();
    }
}
