//! The 1,000 classes of ILSVRC-2012 (ImageNet's classification challenge), in the order of
//! their labels (the order of the WordNet ids `n01440764` ... `n15075141`), with the short
//! English names torchvision gives them (`torchvision.models._meta._IMAGENET_CATEGORIES`,
//! torchvision 0.20.1, where two pairs of WordNet synsets share a name and are told apart:
//! `crane` the machine and `crane bird`, `maillot` and `maillot tank suit`). Any model
//! trained on ILSVRC-2012 with the usual label order (torchvision's, Caffe's, the paper's)
//! uses them.

/// The class names, one per line, label order.
const CLASSES: &str = include_str!("imagenet_classes.txt");

/// How many classes ILSVRC-2012 has.
pub const CLASS_COUNT: usize = 1000;

/// The names of ILSVRC-2012's 1,000 classes, in label order.
pub fn class_names() -> Vec<String> {
    CLASSES.lines().map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thousand_distinct_names_in_label_order() {
        let names = class_names();
        assert_eq!(names.len(), CLASS_COUNT);
        let distinct: std::collections::HashSet<&String> = names.iter().collect();
        assert_eq!(distinct.len(), CLASS_COUNT);
        assert!(names.iter().all(|n| !n.is_empty() && n.trim() == n));
        // Spot checks of the label order (WordNet id order).
        assert_eq!(names[0], "tench");
        assert_eq!(names[1], "goldfish");
        assert_eq!(names[281], "tabby");
        assert_eq!(names[285], "Egyptian cat");
        assert_eq!(names[999], "toilet tissue");
    }
}
