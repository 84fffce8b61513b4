{#- The values of `measure` in a group, joined by `delimiter_text` (a SQL string literal),
    in the order of `order_expr`: dbt.listagg where the adapter orders inside it; on Spark,
    whose collect_list has no ORDER BY, the (key, value) pairs are sorted first. -#}
{% macro ordered_listagg(measure, delimiter_text, order_expr) -%}
    {{ return(adapter.dispatch('ordered_listagg', 'glmm_ab')(measure, delimiter_text, order_expr)) }}
{%- endmacro %}

{% macro default__ordered_listagg(measure, delimiter_text, order_expr) -%}
    {{ dbt.listagg(measure, delimiter_text, "order by " ~ order_expr) }}
{%- endmacro %}

{% macro spark__ordered_listagg(measure, delimiter_text, order_expr) -%}
    array_join(transform(array_sort(collect_list(named_struct('k', {{ order_expr }}, 'v', {{ measure }}))), x -> x.v), {{ delimiter_text }})
{%- endmacro %}
