//! `wire_enum!`: a wire enum declared once.
//!
//! Each enum the protocol puts on the wire (opcodes, field tags, error
//! codes, key types) is written as one list of `Variant = value => "name"`
//! lines, from which the macro makes the enum, its list of every variant,
//! the value/name conversions both ways and `Display`. A hand-kept list
//! beside hand-written matches let an opcode missing from the list go
//! undecodable and drop out of `"all"` grants without a compiler error; here
//! there is nothing to forget. (rustls's `enum_builder!` does the same.)
//!
//! `value` is the number on the wire; `name` is the text used in config,
//! audit records, metrics and docs/PROTOCOL.md. An enum without a numeric
//! wire form (key types travel as their names) leaves the values out.

/// See the module documentation. Every generated item is `pub`, so the
/// enum's own visibility decides who sees it.
macro_rules! wire_enum {
    // Both forms: the names, both ways, and `Display`.
    (@names $name:ident { $( $variant:ident => $text:literal, )+ }) => {
        impl $name {
            /// The name used in config, audit records, metrics and docs.
            pub const fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }

            pub fn from_name(name: &str) -> Option<$name> {
                match name {
                    $( $text => Some($name::$variant), )+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident: $repr:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr($repr)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )+ ];

            /// The number on the wire.
            pub const fn value(self) -> $repr {
                self as $repr
            }

            pub const fn from_value(v: $repr) -> Option<$name> {
                match v {
                    $( $value => Some($name::$variant), )+
                    _ => None,
                }
            }
        }

        wire_enum!(@names $name { $( $variant => $text, )+ });
    };
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )+ ];
        }

        wire_enum!(@names $name { $( $variant => $text, )+ });

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $name::from_name(&text).ok_or_else(|| {
                    let names: Vec<&str> = $name::ALL.iter().map(|v| v.name()).collect();
                    serde::de::Error::custom(format_args!(
                        "unknown {} {:?}, expected one of: {}",
                        stringify!($name),
                        text,
                        names.join(", ")
                    ))
                })
            }
        }
    };
}

pub(crate) use wire_enum;
