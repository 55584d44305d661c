//! How big a run is: [`Size`], chosen on the command line, from which every section picks its sizes.

/// How big a run is. Published figures come from `Full` runs; `Quick` keeps its sizes too, since
/// reports refer to them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Size {
    Full,
    /// `--quick`: everything small, in well under a minute per backend (release build).
    Quick,
    /// `--smoke`: every section at the smallest size that still runs all of its code paths.
    Smoke,
}

impl Size {
    /// The value for this size, of the three given.
    pub(crate) fn pick<T>(self, full: T, quick: T, smoke: T) -> T {
        match self {
            Size::Full => full,
            Size::Quick => quick,
            Size::Smoke => smoke,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        self.pick("full", "quick", "smoke")
    }
}
