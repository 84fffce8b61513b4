{#- 64-bit float. dbt.type_float() is a 32-bit FLOAT on some adapters (DuckDB);
    ANSI 'double precision' is double everywhere. Adapters may override. -#}
{% macro type_double() -%}
    {{ return(adapter.dispatch('type_double', 'glmm_ab')()) }}
{%- endmacro %}

{% macro default__type_double() -%}
    double precision
{%- endmacro %}

{% macro spark__type_double() -%}
    double
{%- endmacro %}
