//! Docker's layer store on the commits of containers with init layers (DOCK7), for the
//! drivers that render Docker (`overlay`, `devmapper`): a commit without changes makes no
//! layer and names its image's top layer; the same tar as the container's last commit
//! makes none either and names that commit's layer (the model's rules, `Store` `Commit`).

use std::collections::BTreeMap;

/// The layer ids commits named without making a layer, and each container's last commit.
/// `P` is what makes two commits the same tar for the driver.
#[derive(Debug)]
pub(crate) struct Commits<P> {
    aliases: BTreeMap<String, String>,
    last: BTreeMap<String, (P, String)>,
}

impl<P: PartialEq> Commits<P> {
    pub(crate) fn new() -> Self {
        Commits {
            aliases: BTreeMap::new(),
            last: BTreeMap::new(),
        }
    }

    /// The layer image id `id` names: itself, or the layer a commit that made none named.
    pub(crate) fn resolve(&self, id: &str) -> String {
        self.aliases
            .get(id)
            .cloned()
            .unwrap_or_else(|| id.to_string())
    }

    /// Whether `id` names a layer a commit made none for.
    pub(crate) fn is_alias(&self, id: &str) -> bool {
        self.aliases.contains_key(id)
    }

    /// A commit of `container` on image `top` as layer `layer`: whether Docker makes no
    /// layer for it (`empty`: no changes; or `print` is the container's last commit's), and
    /// `layer` then names the existing one. Otherwise the layer is to be made, and this
    /// commit is the container's last.
    pub(crate) fn reuses(
        &mut self,
        container: &str,
        top: &str,
        layer: &str,
        empty: bool,
        print: P,
    ) -> bool {
        let same = self.last.get(container).filter(|(p, _)| *p == print);
        let existing = match (empty, same) {
            (true, _) => top.to_string(),
            (false, Some((_, made))) => made.clone(),
            (false, None) => {
                self.last
                    .insert(container.to_string(), (print, layer.to_string()));
                return false;
            }
        };
        self.aliases.insert(layer.to_string(), existing);
        true
    }
}
